"""Helpers shared by the kernel tests, the CUDA checks and ``kernels.compare``.

* random inputs (never zeros) with padding, causal and fully masked rows; quantised weights (Q4_1, Q8_0),
* the error measure and the tolerances every backend must meet.

Error measure: ``relative_error(got, want) = max |got - want| / max |want|``
over the finite entries; the positions of -inf (lse of fully masked rows)
must agree exactly, and any NaN counts as an infinite error.
"""
import numpy as np

TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def max_abs_error(got, want):
    """max |got - want| over entries finite in ``want``; inf if any pattern of non-finite values differs."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise ValueError(f"shape {got.shape} != {want.shape}")
    finite = np.isfinite(want)
    same_pattern = np.array_equal(np.isfinite(got), finite) and np.array_equal(got[~finite], want[~finite])
    if not same_pattern:
        return np.inf
    if not finite.any():
        return 0.0
    return float(np.abs(got[finite].astype(np.float64) - want[finite]).max())


def relative_error(got, want):
    """max |got - want| / max |want| over the finite entries (see module docstring)."""
    want = np.asarray(want)
    finite = np.isfinite(want)
    scale = float(np.abs(want[finite]).max()) if finite.any() else 0.0
    err = max_abs_error(got, want)
    return err / scale if scale > 0.0 else err


def assert_close(name, got, want):
    """Raise AssertionError unless got has want's shape and dtype and is within TOLERANCE[dtype]."""
    want = np.asarray(want)
    got = np.asarray(got)
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    err = relative_error(got, want)
    tol = TOLERANCE[want.dtype]
    assert err <= tol, f"{name}: relative error {err:.3g} > {tol:g}"


def _normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def softmax_case(rng, shape, dtype, masked=True):
    """x of ``shape`` and a mask broadcast over axis -2 with ~30% masked entries; row 0 fully masked."""
    x = _normal(rng, shape, dtype)
    if not masked:
        return x, None
    mask = rng.random(shape[:-2] + (1, shape[-1])) < 0.3
    mask.reshape(-1, shape[-1])[0] = True
    return x, mask


def attention_case(rng, batch, heads, tq, tk, d, dtype, padding=True, kv_heads=None):
    """Random q, k, v, dO and a key padding mask; k and v have ``kv_heads`` heads (default: ``heads``).

    With ``padding``: ~25% of the keys of every sequence are padded and, when
    batch > 1, the last sequence is padded entirely (fully masked rows).
    Returns a dict with keys q, k, v, do, key_padding_mask.
    """
    case = {
        "q": _normal(rng, (batch, heads, tq, d), dtype),
        "k": _normal(rng, (batch, kv_heads or heads, tk, d), dtype),
        "v": _normal(rng, (batch, kv_heads or heads, tk, d), dtype),
        "do": _normal(rng, (batch, heads, tq, d), dtype),
        "key_padding_mask": None,
    }
    if padding:
        mask = rng.random((batch, tk)) < 0.25
        if batch > 1:
            mask[-1] = True
        case["key_padding_mask"] = mask
    return case


def ffn_case(rng, n, d, f, dtype):
    """Random x (N, D), w1 (F, D), b1 (F,), w2 (D, F), b2 (D,) and dy (N, D), weights ~ 1/sqrt(fan_in)."""
    return {
        "x": _normal(rng, (n, d), dtype),
        "w1": (_normal(rng, (f, d), dtype) / np.sqrt(d)).astype(dtype),
        "b1": _normal(rng, (f,), dtype),
        "w2": (_normal(rng, (d, f), dtype) / np.sqrt(f)).astype(dtype),
        "b2": _normal(rng, (d,), dtype),
        "dy": _normal(rng, (n, d), dtype),
    }


def q4_1_case(rng, n, out_features, in_features, dtype):
    """Random x (N, in) and W (O, in) as Q4_1: scale, minimum (O, in/32) and packed (O, in/32, 16) uint8, the
    sizes of SmolLM2's blocks (scales ~0.001-0.05, minima <= 0)."""
    nb = in_features // 32
    return {"x": _normal(rng, (n, in_features), dtype),
            "scale": rng.uniform(0.001, 0.05, (out_features, nb)).astype(dtype),
            "minimum": rng.uniform(-0.4, 0.0, (out_features, nb)).astype(dtype),
            "packed": rng.integers(0, 256, (out_features, nb, 16), dtype=np.uint8)}


def q8_0_case(rng, n, out_features, in_features, dtype):
    """Random x (N, in) and W (O, in) as Q8_0: scale (O, in/32) and quants (O, in/32, 32) int8."""
    nb = in_features // 32
    return {"x": _normal(rng, (n, in_features), dtype),
            "scale": rng.uniform(0.001, 0.05, (out_features, nb)).astype(dtype),
            "quants": rng.integers(-128, 128, (out_features, nb, 32), dtype=np.int8)}
