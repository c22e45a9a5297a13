"""Check every CUDA kernel against the NumPy reference on tiny shapes.

    python -m kernels.cuda.check                            # on a GPU
    NUMBA_ENABLE_CUDASIM=1 python -m kernels.cuda.check     # on the CPU, in Numba's CUDA simulator

Outputs are poisoned with NaN before every launch, so an element a kernel
forgets to write fails the comparison. Shapes are odd (T = 13, D = 5) and not
multiples of the blocks; masks include padding, causal and fully masked rows.
Block sizes are small (8 threads, 4 x 4 matmul tiles) so the simulator, which
runs every CUDA thread as a Python thread, finishes in seconds. Prints one line
per check and exits with status 1 if any check fails.
"""
import sys

import numpy as np
from numba import cuda

from kernels import reference
from kernels.cuda import _common, attention, ffn, softmax
from kernels.testing import TOLERANCE, attention_case, ffn_case, relative_error, softmax_case

BLOCK = 8
TILE = 4


def _poisoned_empty(shape, dtype):
    return cuda.to_device(np.full(shape, np.nan, dtype=dtype))


def _report(failures, name, got, want):
    want = np.asarray(want)
    got = got if isinstance(got, np.ndarray) else got.copy_to_host()
    err = relative_error(got, want)
    ok = got.dtype == want.dtype and err <= TOLERANCE[want.dtype]
    print(f"{'ok  ' if ok else 'FAIL'} {name:60s} rel err {err:.2e}")
    if not ok:
        failures.append(name)


def check_softmax(failures, rng):
    for dtype, masked in [(np.float32, True), (np.float32, False), (np.float64, True)]:
        x, mask = softmax_case(rng, (2, 3, 13), dtype, masked)
        want = reference.softmax(x, 0.7, mask)
        for fn in (softmax.softmax_v1, softmax.softmax_v2, softmax.softmax_v3):
            got = fn(x, 0.7, mask, block_size=BLOCK)
            _report(failures, f"{fn.__name__} {np.dtype(dtype).name} masked={masked}", got, want)


def check_attention(failures, rng):
    cases = [(np.float32, 13, 13, True, True), (np.float64, 5, 13, True, True),
             (np.float32, 13, 7, False, True), (np.float64, 13, 13, False, False)]
    versions = [(attention.attention_forward_v1, attention.attention_backward_v1),
                (attention.attention_forward_v2, attention.attention_backward_v2)]
    for dtype, tq, tk, causal, padding in cases:
        c = attention_case(rng, 2, 1, tq, tk, 5, dtype, padding)
        args, mask = (c["q"], c["k"], c["v"]), c["key_padding_mask"]
        o, lse = reference.attention_forward(*args, mask, causal)
        grads = reference.attention_backward(*args, o, lse, c["do"], mask, causal)
        for forward, backward in versions:
            label = f"{np.dtype(dtype).name} Tq={tq} Tk={tk} causal={causal} padding={padding}"
            got_o, got_lse = forward(*args, mask, causal, block_size=BLOCK)
            _report(failures, f"{forward.__name__} o {label}", got_o, o)
            _report(failures, f"{forward.__name__} lse {label}", got_lse, lse)
            got = backward(*args, o, lse, c["do"], mask, causal, block_size=BLOCK)
            for name, g, w in zip(["dq", "dk", "dv"], got, grads):
                _report(failures, f"{backward.__name__} {name} {label}", g, w)


def check_device_arrays(failures, rng):
    """Device arrays in, device arrays out (no host copies)."""
    c = attention_case(rng, 2, 1, 6, 9, 5, np.float32)
    args = (c["q"], c["k"], c["v"])
    o, _ = reference.attention_forward(*args, c["key_padding_mask"], True)
    device_args = [cuda.to_device(a) for a in args]
    got, _ = attention.attention_forward_v2(*device_args, cuda.to_device(c["key_padding_mask"]), True,
                                            block_size=BLOCK)
    _report(failures, "attention_forward_v2 device arrays", got, o)


def check_ffn(failures, rng):
    for dtype, activation in [(np.float32, "relu"), (np.float32, "gelu"), (np.float32, "gelu_tanh"),
                              (np.float64, "gelu")]:
        c = ffn_case(rng, 9, 5, 6, dtype)
        params = (c["x"], c["w1"], c["b1"], c["w2"], c["b2"])
        y, h_pre = reference.ffn_forward(*params, activation)
        grads = reference.ffn_backward(*params, h_pre, c["dy"], activation)
        label = f"{np.dtype(dtype).name} {activation}"
        got_y, got_h_pre = ffn.ffn_forward(*params, activation, tile=TILE)
        _report(failures, f"ffn_forward y {label}", got_y, y)
        _report(failures, f"ffn_forward h_pre {label}", got_h_pre, h_pre)
        got = ffn.ffn_backward(*params, h_pre, c["dy"], activation, tile=TILE)
        for name, g, w in zip(["dx", "dw1", "db1", "dw2", "db2"], got, grads):
            _report(failures, f"ffn_backward {name} {label}", g, w)


def main():
    _common.device_empty = _poisoned_empty
    rng = np.random.default_rng(0)
    failures = []
    for check in (check_softmax, check_attention, check_device_arrays, check_ffn):
        check(failures, rng)
    print(f"{len(failures)} failed" if failures else "all CUDA checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
