"""Check every CUDA kernel against the NumPy reference on tiny shapes.

    python -m kernels.cuda.check                            # on a GPU
    NUMBA_ENABLE_CUDASIM=1 python -m kernels.cuda.check     # on the CPU, in Numba's CUDA simulator

Outputs are poisoned with NaN before every launch, so an element a kernel
forgets to write fails the comparison. Shapes are odd (T = 13, D = 5) and not
multiples of the blocks; masks include padding, causal (also with Tq > Tk) and
fully masked rows. Device arrays (inputs and masks) must give device results,
and the package's fused-op API (``kernels.cuda.attention_forward``, ...) must
have kernels.cpu's signature and give NumPy results for NumPy inputs.
Block sizes are small (8 threads, 4 x 4 matmul tiles) so the simulator, which
runs every CUDA thread as a Python thread, finishes in seconds. Prints one line
per check and exits with status 1 if any check fails.

Every version in the families' registries (``VERSIONS``, see kernels/versions.py) is checked; a tuning knob
a version takes (``block_size``, ``tile``) is set to the tiny sizes above.
"""
import inspect
import sys

import numpy as np
from numba import cuda

import kernels.cuda
from kernels import cpu, reference
from kernels.activations import ACTIVATIONS
from kernels.cuda import _common, attention, ffn, quantized, softmax
from kernels.testing import (TOLERANCE, attention_case, ffn_case, q4_1_case, q8_0_case, relative_error,
                             softmax_case)

BLOCK = 8
TILE = 4
TINY_KNOBS = {"block_size": BLOCK, "tile": TILE}


def tiny(fn):
    """fn with its tuning knobs (block_size, tile) set to the simulator's tiny sizes."""
    knobs = {k: v for k, v in TINY_KNOBS.items() if k in inspect.signature(fn).parameters}
    return lambda *args: fn(*args, **knobs)


def _poisoned_empty(shape, dtype):
    return cuda.to_device(np.full(shape, np.nan, dtype=dtype))


def _line(failures, name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name:60s} {detail}")
    if not ok:
        failures.append(name)


def _report(failures, name, got, want, on_device=False):
    """got matches want; got is a device array if on_device, else a NumPy array."""
    if not (cuda.devicearray.is_cuda_ndarray(got) if on_device else isinstance(got, np.ndarray)):
        _line(failures, name, False, f"wrong result type {type(got).__name__}")
        return
    want = np.asarray(want)
    got = got.copy_to_host() if on_device else got
    err = relative_error(got, want)
    _line(failures, name, got.dtype == want.dtype and err <= TOLERANCE[want.dtype], f"rel err {err:.2e}")


def check_softmax(failures, rng):
    for dtype, masked in [(np.float32, True), (np.float32, False), (np.float64, True)]:
        x, mask = softmax_case(rng, (2, 3, 13), dtype, masked)
        want = reference.softmax(x, 0.7, mask)
        for version in softmax.VERSIONS.values():
            got = tiny(version.softmax)(x, 0.7, mask)
            _report(failures, f"softmax {version.name} {np.dtype(dtype).name} masked={masked}", got, want)


def check_attention(failures, rng):
    cases = [(np.float32, 13, 13, True, True, 1, 1), (np.float64, 5, 13, True, True, 1, 1),
             (np.float32, 13, 7, False, True, 1, 1), (np.float32, 13, 7, True, True, 1, 1),
             (np.float64, 13, 13, False, False, 1, 1),
             (np.float32, 13, 11, True, True, 4, 2), (np.float64, 9, 13, False, True, 3, 1)]  # grouped-query
    for dtype, tq, tk, causal, padding, heads, kv_heads in cases:
        c = attention_case(rng, 2, heads, tq, tk, 5, dtype, padding, kv_heads=kv_heads)
        args, mask = (c["q"], c["k"], c["v"]), c["key_padding_mask"]
        o, lse = reference.attention_forward(*args, mask, causal)
        grads = reference.attention_backward(*args, o, lse, c["do"], mask, causal)
        for version in attention.VERSIONS.values():
            label = (f"{version.name} {np.dtype(dtype).name} Tq={tq} Tk={tk} causal={causal} padding={padding} "
                     f"H={heads} Hkv={kv_heads}")
            got_o, got_lse = tiny(version.attention_forward)(*args, mask, causal)
            _report(failures, f"attention_forward o {label}", got_o, o)
            _report(failures, f"attention_forward lse {label}", got_lse, lse)
            got = tiny(version.attention_backward)(*args, o, lse, c["do"], mask, causal)
            for name, g, w in zip(["dq", "dk", "dv"], got, grads):
                _report(failures, f"attention_backward {name} {label}", g, w)


def check_small_tiles(failures, rng):
    """v2 attention with shared-memory tiles of fewer rows (3) than the block has threads (8).

    That is what large head dims get on a GPU (see kernels/cuda/attention.py); here the shared-memory
    budget is shrunk to 3 rows of the float32 D = 5 tiles, (2 D + 2) * 4 bytes each.
    """
    budget = _common.STATIC_SHARED_BYTES
    _common.STATIC_SHARED_BYTES = 3 * (2 * 5 + 2) * 4
    try:
        for tq, tk, causal in [(13, 13, True), (13, 7, True)]:
            c = attention_case(rng, 2, 1, tq, tk, 5, np.float32)
            args, mask = (c["q"], c["k"], c["v"]), c["key_padding_mask"]
            o, lse = reference.attention_forward(*args, mask, causal)
            grads = reference.attention_backward(*args, o, lse, c["do"], mask, causal)
            label = f"tile=3 block={BLOCK} Tq={tq} Tk={tk} causal={causal}"
            got_o, got_lse = attention.attention_forward_v2(*args, mask, causal, block_size=BLOCK)
            _report(failures, f"attention_forward_v2 o {label}", got_o, o)
            _report(failures, f"attention_forward_v2 lse {label}", got_lse, lse)
            got = attention.attention_backward_v2(*args, o, lse, c["do"], mask, causal, block_size=BLOCK)
            for name, g, w in zip(["dq", "dk", "dv"], got, grads):
                _report(failures, f"attention_backward_v2 {name} {label}", g, w)
    finally:
        _common.STATIC_SHARED_BYTES = budget


def check_device_arrays(failures, rng):
    """Device arrays in (masks included), device arrays out (no host copies); bad device masks are refused."""
    c = attention_case(rng, 2, 1, 6, 9, 5, np.float32)
    args, mask = (c["q"], c["k"], c["v"]), c["key_padding_mask"]
    o, lse = reference.attention_forward(*args, mask, True)
    grads = reference.attention_backward(*args, o, lse, c["do"], mask, True)
    device_args = [cuda.to_device(a) for a in args]
    device_mask = cuda.to_device(mask.reshape(2, 1, 1, 9))                 # (B, 1, 1, Tk) is accepted too
    got_o, got_lse = attention.attention_forward_v2(*device_args, device_mask, True, block_size=BLOCK)
    _report(failures, "attention_forward_v2 device arrays, (B, 1, 1, Tk) mask", got_o, o, on_device=True)
    got = attention.attention_backward_v2(*device_args, got_o, got_lse, cuda.to_device(c["do"]), device_mask,
                                          True, block_size=BLOCK)
    for name, g, w in zip(["dq", "dk", "dv"], got, grads):
        _report(failures, f"attention_backward_v2 {name} device arrays", g, w, on_device=True)

    x, mask = softmax_case(rng, (2, 3, 13), np.float32, True)
    full_mask = np.broadcast_to(mask, x.shape).copy()
    got = softmax.softmax_v3(cuda.to_device(x), 0.7, cuda.to_device(full_mask), block_size=BLOCK)
    _report(failures, "softmax_v3 device arrays, device mask", got, reference.softmax(x, 0.7, mask), on_device=True)

    refused = [("softmax device mask that needs broadcasting",
                lambda: softmax.softmax_v3(cuda.to_device(x), 0.7, cuda.to_device(mask), block_size=BLOCK)),
               ("attention with H not a multiple of Hkv",
                lambda: attention.attention_forward_v2(device_args[0], *(cuda.to_device(np.concatenate([a, a], 1))
                                                                         for a in args[1:]), block_size=BLOCK)),
               ("attention device padding mask of the wrong shape",
                lambda: attention.attention_forward_v2(*device_args, cuda.to_device(np.zeros((2, 8), bool)),
                                                       block_size=BLOCK))]
    for name, call in refused:
        try:
            call()
            _line(failures, f"refuses {name}", False, "no error")
        except ValueError as e:
            _line(failures, f"refuses {name}", True, str(e)[:60])


def check_ffn(failures, rng):
    """Every activation of kernels/activations.py in float32, gelu in float64, for every FFN version."""
    for dtype, activation in [(np.float32, a) for a in ACTIVATIONS] + [(np.float64, "gelu")]:
        c = ffn_case(rng, 9, 5, 6, dtype)
        params = (c["x"], c["w1"], c["b1"], c["w2"], c["b2"])
        y, h_pre = reference.ffn_forward(*params, activation)
        grads = reference.ffn_backward(*params, h_pre, c["dy"], activation)
        for version in ffn.VERSIONS.values():
            label = f"{version.name} {np.dtype(dtype).name} {activation}"
            got_y, got_h_pre = tiny(version.ffn_forward)(*params, activation)
            _report(failures, f"ffn_forward y {label}", got_y, y)
            _report(failures, f"ffn_forward h_pre {label}", got_h_pre, h_pre)
            got = tiny(version.ffn_backward)(*params, h_pre, c["dy"], activation)
            for name, g, w in zip(["dx", "dw1", "db1", "dw2", "db2"], got, grads):
                _report(failures, f"ffn_backward {name} {label}", g, w)


def check_quantized(failures, rng):
    """Q4_1 and Q8_0 products, float32 and float64, for every version: 5 output rows, 2 rows of x, in = 96 (3
    quantisation blocks, 48 packed bytes a row: each of the 8 threads strides over several), plus one row of
    x in = 32 (fewer bytes than threads)."""
    for dtype, (n, o, i) in [(np.float32, (2, 5, 96)), (np.float64, (2, 5, 96)), (np.float32, (1, 3, 32))]:
        q4, q8 = q4_1_case(rng, n, o, i, dtype), q8_0_case(rng, n, o, i, dtype)
        q4_args, q8_args = (q4["x"], q4["scale"], q4["minimum"], q4["packed"]), (q8["x"], q8["scale"], q8["quants"])
        for version in quantized.VERSIONS.values():
            label = f"{version.name} {np.dtype(dtype).name} N={n} O={o} in={i}"
            _report(failures, f"q4_1_linear {label}", tiny(version.q4_1_linear)(*q4_args),
                    reference.q4_1_linear(*q4_args))
            _report(failures, f"q8_0_linear {label}", tiny(version.q8_0_linear)(*q8_args),
                    reference.q8_0_linear(*q8_args))
    got = quantized.q4_1_linear(*(cuda.to_device(a) for a in q4_args), block_size=BLOCK)
    _report(failures, "q4_1_linear device arrays", got, reference.q4_1_linear(*q4_args), on_device=True)
    try:
        quantized.q4_1_linear(q4_args[0][:, :16], *q4_args[1:], block_size=BLOCK)
        _line(failures, "q4_1_linear refuses x of the wrong width", False, "no error")
    except ValueError as e:
        _line(failures, "q4_1_linear refuses x of the wrong width", True, str(e)[:60])


def check_package_api(failures, rng):
    """kernels.cuda.attention_forward, ... have kernels.cpu's signature and give NumPy results for NumPy inputs.

    Both backends take kernels.reference's parameters first, then only tuning knobs with defaults.
    """
    for name in ("attention_forward", "attention_backward", "ffn_forward", "ffn_backward", "q4_1_linear",
                 "q8_0_linear"):
        common = list(inspect.signature(getattr(reference, name)).parameters.values())
        same = True
        for module in (cpu, kernels.cuda):
            params = list(inspect.signature(getattr(module, name)).parameters.values())
            same &= params[:len(common)] == common and all(p.default is not p.empty for p in params[len(common):])
        _line(failures, f"kernels.cuda.{name} has kernels.cpu's signature", same, "")
    c = attention_case(rng, 2, 1, 7, 9, 5, np.float64)
    args, mask = (c["q"], c["k"], c["v"]), c["key_padding_mask"]
    o, lse = reference.attention_forward(*args, mask, True)
    got = kernels.cuda.attention_forward(*args, mask, True, block_size=BLOCK)
    for label, g, w in zip(["o", "lse"], got, (o, lse)):
        _report(failures, f"kernels.cuda.attention_forward {label}", g, w)
    got = kernels.cuda.attention_backward(*args, o, lse, c["do"], mask, True, block_size=BLOCK)
    for label, g, w in zip(["dq", "dk", "dv"], got, reference.attention_backward(*args, o, lse, c["do"], mask, True)):
        _report(failures, f"kernels.cuda.attention_backward {label}", g, w)
    c = ffn_case(rng, 5, 3, 4, np.float64)
    params = (c["x"], c["w1"], c["b1"], c["w2"], c["b2"])
    y, h_pre = reference.ffn_forward(*params, "gelu")
    got = kernels.cuda.ffn_forward(*params, "gelu", tile=TILE)
    for label, g, w in zip(["y", "h_pre"], got, (y, h_pre)):
        _report(failures, f"kernels.cuda.ffn_forward {label}", g, w)
    got = kernels.cuda.ffn_backward(*params, h_pre, c["dy"], "gelu", tile=TILE)
    want = reference.ffn_backward(*params, h_pre, c["dy"], "gelu")
    for label, g, w in zip(["dx", "dw1", "db1", "dw2", "db2"], got, want):
        _report(failures, f"kernels.cuda.ffn_backward {label}", g, w)


def main():
    _common.device_empty = _poisoned_empty
    rng = np.random.default_rng(0)
    failures = []
    for check in (check_softmax, check_attention, check_small_tiles, check_device_arrays, check_ffn,
                  check_quantized, check_package_api):
        check(failures, rng)
    print(f"{len(failures)} failed" if failures else "all CUDA checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
