"""What users call: ``import minitx.functional as F``.

Thin, documented wrappers over the ops in :mod:`minitx.ops`, each op with its own backward (``linear`` is
one of them: ``ops.Linear``), plus functions composed from those ops: ``split`` (slices), and
``scaled_dot_product_attention`` and ``feed_forward``, which read like the equations and get their gradients
from the ops they are made of. On the fused path (the default; see :func:`set_fused_kernels`) those two are
instead one op each (:mod:`minitx.ops.fused`), with its own backward, and so, on the CPU, are ``layer_norm``
(with an optional residual summed inside it) and ``cross_entropy``; ``fused=False`` in a call, or
``set_fused_kernels(False)``, gives the composed ops, the ones to read.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from kernels.activations import ACTIVATIONS

from . import backend, ops
from .ops.fused import FusedAttention, FusedCrossEntropy, FusedFeedForward, FusedLayerNorm
from .tensor import Tensor

IGNORE_INDEX = -100  # a target that takes no part in cross_entropy (padding, unmasked MLM tokens, no SOP label)

# ------------------------------------------------------------------------------------ fused-kernel switch
_use_fused = True  # the fused kernels compute the composed path's function within float32 rounding, faster
# Below Tq·Tk = 16² scores per head the fused attention kernel's parallel launch and tiling cost more than they
# save, so the default (fused=None) takes the composed ops there (training steps at T = 4 and 8 were 4-8% slower
# fused, at T = 16-48 as fast or up to 8% faster; measured on square T: benchmarks/RESULTS.md).
FUSED_ATTENTION_MIN_SCORES = 16 * 16


def set_fused_kernels(enabled: bool) -> None:
    """Make attention, the FFN, layer norm and cross-entropy use the fused kernels (``kernels/``, the default)
    or the composed ops.

    The fused kernels are used only where they apply (attention: (B, H, T, d) inputs, boolean padding and
    causal masks, no dropout, no returned weights; FFN: both biases, no dropout; layer norm and cross-entropy:
    CPU arrays, layer norm over one axis); other calls take the composed ops whatever the setting.
    """
    global _use_fused
    _use_fused = bool(enabled)


@contextlib.contextmanager
def fused_kernels(enabled: bool = True):
    """``with fused_kernels():`` — the fused path inside the block, the previous setting after it."""
    global _use_fused
    previous, _use_fused = _use_fused, bool(enabled)
    try:
        yield
    finally:
        _use_fused = previous


def _choose_fused(fused: bool | None, supported: bool, why_not: str, op: str) -> bool:
    """Resolve a per-call ``fused`` argument (None = the global setting) against what the kernel supports.

    The global setting quietly falls back to the composed ops for calls the kernel cannot do; asking for
    ``fused=True`` explicitly on such a call is an error.
    """
    if fused is None:
        return _use_fused and supported
    if fused and not supported:
        raise ValueError(f"{op}: the fused kernel does not support {why_not}; call it with fused=False")
    return bool(fused)

# ------------------------------------------------------------------------------------------ elementwise


def exp(x):
    return ops.Exp.apply(x)


def log(x):
    return ops.Log.apply(x)


def sqrt(x):
    return ops.Sqrt.apply(x)


def rsqrt(x):
    """1/√x."""
    return ops.Rsqrt.apply(x)


def sin(x):
    return ops.Sin.apply(x)


def cos(x):
    return ops.Cos.apply(x)


def tanh(x):
    return ops.Tanh.apply(x)


def sigmoid(x):
    return ops.Sigmoid.apply(x)


def silu(x):
    """SiLU(x) = x·σ(x) (also called swish)."""
    return ops.SiLU.apply(x)


def relu(x):
    return ops.ReLU.apply(x)


def leaky_relu(x, negative_slope: float = 0.01):
    """x where x > 0, else negative_slope·x."""
    return ops.LeakyReLU.apply(x, negative_slope=negative_slope)


def softplus(x, beta: float = 1.0, threshold: float = 20.0):
    """(1/β)·ln(1 + e^(βx)), a smooth ReLU; x itself where βx > threshold (as in PyTorch)."""
    return ops.Softplus.apply(x, beta=beta, threshold=threshold)


def maximum(a, b):
    """max(a, b) elementwise, with broadcasting (ties split the gradient in half, as in PyTorch)."""
    return ops.Maximum.apply(a, b)


def minimum(a, b):
    """min(a, b) elementwise, with broadcasting (ties split the gradient in half, as in PyTorch)."""
    return ops.Minimum.apply(a, b)


def clamp(x, min=None, max=None):  # noqa: A002 - PyTorch's names
    """Each element clipped to [min, max] (either bound may be None)."""
    return ops.Clamp.apply(x, low=min, high=max)


def gelu(x, approximate: str = "none"):
    """GELU(x) = x·Φ(x): the exact erf form (``approximate="none"``) or the tanh approximation."""
    return ops.GELU.apply(x, approximate=approximate)


def matmul(a, b):
    return ops.MatMul.apply(a, b)


# -------------------------------------------------------------------------------------- shape and select


def concat(tensors, axis: int = 0):
    return ops.Concat.apply(*tensors, axis=axis)


def stack(tensors, axis: int = 0):
    return ops.Stack.apply(*tensors, axis=axis)


def repeat_interleave(x, repeats: int, axis: int = 0):
    """Each slice of ``x`` along ``axis`` repeated ``repeats`` times in a row: [a, b] -> [a, a, b, b]."""
    return ops.RepeatInterleave.apply(x, repeats=repeats, axis=axis)


def split(x: Tensor, size_or_sections, axis: int = 0) -> list[Tensor]:
    """Split ``x`` along ``axis`` into pieces of ``size_or_sections`` (an int: equal pieces of that size,
    the last one possibly shorter, as in ``torch.split``; a list: the size of each piece)."""
    n = x.shape[axis]
    sizes = size_or_sections
    if isinstance(sizes, int):
        sizes = [sizes] * (n // sizes) + ([n % sizes] if n % sizes else [])
    if sum(sizes) != n:
        raise ValueError(f"split: sizes {list(sizes)} add up to {sum(sizes)}, but axis {axis} of shape {x.shape} has {n}")
    pieces, start = [], 0
    lead = (slice(None),) * (axis % x.ndim)
    for size in sizes:
        pieces.append(x[lead + (slice(start, start + size),)])
        start += size
    return pieces


def chunk(x: Tensor, chunks: int, axis: int = 0) -> list[Tensor]:
    """``chunks`` pieces of ⌈n / chunks⌉ along ``axis``, the last one shorter (as ``torch.chunk``)."""
    return x.chunk(chunks, axis)


def where(cond, a, b):
    return ops.Where.apply(cond, a, b)


def masked_fill(x, mask, value: float):
    return ops.MaskedFill.apply(x, mask, value=value)


def tril(x, diagonal: int = 0):
    """The lower triangle of the last two axes (j - i ≤ diagonal), zeros above."""
    return ops.Triangle.apply(x, diagonal=diagonal, upper=False)


def triu(x, diagonal: int = 0):
    """The upper triangle of the last two axes (j - i ≥ diagonal), zeros below."""
    return ops.Triangle.apply(x, diagonal=diagonal, upper=True)


def gather(x, axis: int, index):
    """``torch.gather``: z[p] = x[p with its coordinate on ``axis`` replaced by index[p]]; for a matrix and
    axis=1, z[i, j] = x[i, index[i, j]]."""
    return ops.Gather.apply(x, index, axis=axis)


# ---------------------------------------------------------------------------------------- neural network


def softmax(x, axis: int = -1):
    return ops.Softmax.apply(x, axis=axis)


def log_softmax(x, axis: int = -1):
    return ops.LogSoftmax.apply(x, axis=axis)


def logsumexp(x, axis, keepdims: bool = False):
    """log Σ exp(x) over ``axis``, computed without overflow."""
    return ops.LogSumExp.apply(x, axis=axis, keepdims=keepdims)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + b, with W of shape (out, in) as in PyTorch; x (…, in) -> y (…, out).

    One op (``ops.Linear``): the leading axes are flattened so the product is one large matrix multiply.
    """
    return ops.Linear.apply(x, weight) if bias is None else ops.Linear.apply(x, weight, bias)


def embedding(ids, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Rows of ``weight`` (V, D) picked by the integer ``ids`` (…) -> (…, D).

    The row ``padding_idx`` (if given) is read as usual but receives no gradient.
    """
    return ops.Embedding.apply(weight, ids, padding_idx=padding_idx)


def one_hot(ids, num_classes: int = -1) -> Tensor:
    """Integer ``ids`` (…) -> (…, num_classes) int64, 1 at each id and 0 elsewhere (as ``torch.nn.functional.one_hot``).

    ``num_classes=-1`` takes max(ids) + 1. Integers in, integers out: the result has no gradient (to learn
    from a class index, use :func:`embedding`, which is a one-hot row times a matrix without building it).
    """
    ids = ids if isinstance(ids, Tensor) else Tensor(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"one_hot: ids must be an integer tensor, got dtype {ids.dtype} (shape {ids.shape})")
    low = int(ids.data.min()) if ids.size else 0
    high = int(ids.data.max()) if ids.size else -1
    num_classes = high + 1 if num_classes == -1 else num_classes
    if low < 0 or high >= num_classes:
        raise ValueError(f"one_hot: ids must lie in [0, num_classes={num_classes}), got values in [{low}, {high}]")
    xp = ids.xp
    return Tensor(ids.data[..., None] == xp.arange(num_classes), dtype=xp.int64)


def layer_norm(x: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5, residual: Tensor | None = None, fused: bool | None = None) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` axes, then scale by γ and shift by β.

    With ``residual``, the input is the residual sum x + residual (a post-norm block's ``LayerNorm(x +
    sublayer(x))``). ``fused`` as in :func:`scaled_dot_product_attention`: the fused kernel
    (``ops.fused.FusedLayerNorm``: CPU, one normalised axis; the sum is never stored) or ``ops.LayerNorm``
    of ``x + residual``.
    """
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[-len(normalized_shape):] != normalized_shape:
        raise ValueError(f"layer_norm: input shape {x.shape} does not end with normalized_shape {normalized_shape}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"layer_norm: residual has shape {residual.shape}, expected the input's {x.shape}")
    xp = x.xp
    weight = weight if weight is not None else Tensor(xp.ones(normalized_shape, dtype=x.dtype))
    bias = bias if bias is not None else Tensor(xp.zeros(normalized_shape, dtype=x.dtype))
    floats = {x.dtype, weight.dtype, bias.dtype} | ({residual.dtype} if residual is not None else set())
    unsupported = [name for name, used in (("a device other than the CPU", x.device != "cpu"),
                                           ("more than one normalised axis", len(normalized_shape) != 1),
                                           ("inputs other than all float32 or all float64",
                                            floats not in ({np.dtype(np.float32)}, {np.dtype(np.float64)}))) if used]
    if _choose_fused(fused, not unsupported, ", ".join(unsupported), "layer_norm"):
        inputs = (x, weight, bias) if residual is None else (x, weight, bias, residual)
        return FusedLayerNorm.apply(*inputs, eps=eps)
    x = x if residual is None else x + residual
    return ops.LayerNorm.apply(x, weight, bias, normalized_ndim=len(normalized_shape), eps=eps)


def rms_norm(x: Tensor, normalized_shape, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """y = x / √(mean(x²) + ε) · γ over the trailing ``normalized_shape`` axes (``ops.RMSNorm``)."""
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[-len(normalized_shape):] != normalized_shape:
        raise ValueError(f"rms_norm: input shape {x.shape} does not end with normalized_shape {normalized_shape}")
    weight = weight if weight is not None else Tensor(x.xp.ones(normalized_shape, dtype=x.dtype))
    return ops.RMSNorm.apply(x, weight, normalized_ndim=len(normalized_shape), eps=eps)


def rotary_embedding(x: Tensor, cos, sin, interleaved: bool = False) -> Tensor:
    """Rotate every feature pair of x (…, T, d) by its angle θ (``ops.Rotary``): cos, sin (T, d/2) hold
    cos θ and sin θ for each position and pair (:class:`minitx.nn.RotaryEmbedding` computes them).

    ``interleaved``: the pairs are adjacent features (x_2i, x_2i+1), as in llama.cpp/GGUF; otherwise the two
    halves (x_i, x_i+d/2), as in Hugging Face's Llama.
    """
    cos = cos.data if isinstance(cos, Tensor) else cos
    sin = sin.data if isinstance(sin, Tensor) else sin
    return ops.Rotary.apply(x, cos=cos.astype(x.dtype, copy=False), sin=sin.astype(x.dtype, copy=False),
                            interleaved=interleaved)


def normalize(x: Tensor, p: float = 2.0, axis: int = -1, eps: float = 1e-12) -> Tensor:
    """x / max(‖x‖_p, eps) along ``axis``: unit vectors (p = 2, the default: L2 normalisation).

    The LAST axis by default, as the rest of minitx; PyTorch's ``normalize`` defaults to dim=1 (the same axis
    for (N, C) input). :mod:`minitx.embed` uses it to make sentence vectors of length one.
    """
    return ops.Normalize.apply(x, p=p, axis=axis, eps=eps)


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p); identity when not training."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0:
        return x
    return ops.Dropout.apply(x, p=p)


def cross_entropy(logits: Tensor, target, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0,
                  reduction: str = "mean", fused: bool | None = None) -> Tensor:
    """Cross-entropy of ``logits`` (…, C) against integer ``target`` (…).

    Classes are on the LAST axis (so (B, T, V) language-model logits go in as they are, with (B, T)
    targets); PyTorch puts them on axis 1. Targets equal to ``ignore_index`` (:data:`IGNORE_INDEX`, -100,
    PyTorch's value) are skipped; "mean" divides by the number of the others (NaN when there are none, with a
    zero gradient, as in PyTorch).

    ``fused`` as in :func:`scaled_dot_product_attention`: the fused kernel (``ops.fused.FusedCrossEntropy``,
    CPU float logits: log-softmax and NLL in one pass, no (…, C) array kept) or ``ops.CrossEntropy``.
    """
    target = _class_targets("cross_entropy", logits, target, reduction)
    unsupported = [name for name, used in (("a device other than the CPU", logits.device != "cpu"),
                                           ("logits other than float32 or float64",
                                            logits.dtype not in (np.float32, np.float64)),
                                           ("logits without a class axis", logits.ndim == 0)) if used]
    if _choose_fused(fused, not unsupported, ", ".join(unsupported), "cross_entropy"):
        return FusedCrossEntropy.apply(logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing,
                                       reduction=reduction)
    return ops.CrossEntropy.apply(logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing,
                                  reduction=reduction)


def nll_loss(log_probs: Tensor, target, ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood: -log_probs[target] for log-probabilities (…, C) and integer ``target`` (…).

    ``nll_loss(log_softmax(logits), target)`` is ``cross_entropy(logits, target)``. Classes are on the LAST
    axis, as in :func:`cross_entropy`.
    """
    target = _class_targets("nll_loss", log_probs, target, reduction)
    return ops.NLLLoss.apply(log_probs, target, ignore_index=ignore_index, reduction=reduction)


def _class_targets(op: str, scores: Tensor, target, reduction: str) -> Tensor:
    """``target`` as a Tensor, after checking it holds integers of the scores' shape without its class axis."""
    target = target if isinstance(target, Tensor) else Tensor(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"{op}: target must hold integer class indices, got dtype {target.dtype} "
                        f"(shape {target.shape})")
    if target.shape != scores.shape[:-1]:
        raise ValueError(f"{op}: target shape {target.shape} must equal the input's shape without its class "
                         f"axis, {scores.shape[:-1]} (input {scores.shape})")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return target


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask=None, key_padding_mask=None,
                                 is_causal: bool = False, dropout_p: float = 0.0, training: bool = True,
                                 scale: float | None = None, return_weights: bool = False,
                                 fused: bool | None = None, enable_gqa: bool = False):
    """Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V, composed from primitive ops.

    Shapes: q (…, Tq, d_k), k (…, Tk, d_k), v (…, Tk, d_v) -> (…, Tq, d_v); with heads, … = (B, H).
    Masks say where a query may NOT look (True = masked out, as in ``torch.nn.MultiheadAttention``):
    ``attn_mask`` bool broadcastable to (…, Tq, Tk), or a float mask added to the scores (a Tensor that
    requires grad, such as a learnable attention bias, gets its gradient; an integer mask is refused);
    ``key_padding_mask`` bool (B, Tk) marks padded keys; ``is_causal`` hides keys after the query.
    A query whose keys are all masked gets all-zero weights and a zero output (see ``softmax``).
    With ``return_weights=True`` the attention weights (…, Tq, Tk) are returned as well.

    ``fused`` picks the implementation: the composed ops below (False), the fused kernel of
    ``kernels/`` (True: (B, H, T, d) inputs, boolean padding/causal masks only, no dropout, no weights), or
    the global setting (None, see :func:`set_fused_kernels`; the composed ops when Tq·Tk is below
    ``FUSED_ATTENTION_MIN_SCORES``).

    Grouped-query attention (``enable_gqa``, as in PyTorch): k and v (B, H_kv, Tk, d) have fewer heads than
    q (B, H, Tq, d), H a multiple of H_kv; key/value head j serves the query heads j·g … j·g + g - 1,
    g = H / H_kv. The fused kernel reads each key/value head in place for its g query heads; the composed path
    repeats k and v to H heads first (a copy of g·Tk·d per key/value head).
    """
    grouped = enable_gqa and k.shape[-3] != q.shape[-3]
    if grouped:
        _check_kv_heads(q, k, v)
    if fused is None and q.shape[-2] * k.shape[-2] < FUSED_ATTENTION_MIN_SCORES:
        fused = False  # too small for the fused kernel to pay off
    unsupported = [name for name, used in (("attn_mask", attn_mask is not None), ("return_weights", return_weights),
                                           ("dropout", dropout_p > 0 and training),
                                           ("inputs that are not (B, H, T, d)", q.ndim != 4)) if used]
    if _choose_fused(fused, not unsupported, ", ".join(unsupported), "scaled_dot_product_attention"):
        kpm = key_padding_mask.data if isinstance(key_padding_mask, Tensor) else key_padding_mask
        return FusedAttention.apply(q, k, v, key_padding_mask=kpm, causal=is_causal, scale=scale)
    if grouped:
        k, v = _repeat_kv_heads(q, k, v)
    d_k = q.shape[-1]
    scale = 1.0 / math.sqrt(d_k) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (…, Tq, Tk)
    mask = combine_masks(scores.shape, attn_mask, key_padding_mask, is_causal, scores.xp)  # bool or None
    if attn_mask is not None and not isinstance(attn_mask, Tensor):
        attn_mask = Tensor(scores.xp.asarray(attn_mask))
    if attn_mask is not None and attn_mask.dtype != bool:  # a float bias, part of the graph
        scores = scores + attn_mask.astype(scores.dtype)
    if mask is not None:
        scores = scores.masked_fill(Tensor(mask), -math.inf)
    weights = softmax(scores, axis=-1)  # (…, Tq, Tk)
    out = dropout(weights, dropout_p, training) @ v  # (…, Tq, d_v)
    return (out, weights) if return_weights else out


def _check_kv_heads(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Grouped-query attention needs q (…, H, Tq, d) with H a multiple of the head count H_kv of k and v."""
    if q.ndim < 3 or q.shape[-3] % k.shape[-3] or v.shape[-3] != k.shape[-3]:
        raise ValueError(f"scaled_dot_product_attention: with enable_gqa, q (…, H, Tq, d) needs H a multiple of "
                         f"k's and v's head count; got q {q.shape}, k {k.shape}, v {v.shape}")


def _repeat_kv_heads(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """k, v (…, H_kv, Tk, d) -> (…, H, Tk, d), each key/value head repeated for its g = H / H_kv query heads."""
    group = q.shape[-3] // k.shape[-3]
    return repeat_interleave(k, group, axis=-3), repeat_interleave(v, group, axis=-3)


def combine_masks(scores_shape: tuple, attn_mask, key_padding_mask, is_causal: bool, xp):
    """One boolean mask broadcastable to the scores (…, Tq, Tk) from the three ways of masking, or None.

    Boolean masks are OR-ed (True = masked out). A float ``attn_mask`` is only checked here (its shape): it
    is a bias that the caller adds to the scores. An integer ``attn_mask`` is refused, as in PyTorch: read as
    a bias, its 0/1 entries would hide nothing.
    """
    tq, tk = scores_shape[-2:]
    masks = []
    if is_causal:
        masks.append(xp.triu(xp.ones((tq, tk), dtype=bool), k=1 + tk - tq))  # key j > query i (end-aligned)
    if key_padding_mask is not None:
        kpm = key_padding_mask.data if isinstance(key_padding_mask, Tensor) else xp.asarray(key_padding_mask)
        if kpm.dtype != bool or kpm.ndim != 2 or kpm.shape[-1] != tk:
            raise ValueError(f"key_padding_mask must be a boolean (B, Tk={tk}) array, got dtype {kpm.dtype} "
                             f"and shape {tuple(kpm.shape)}")
        masks.append(kpm.reshape(kpm.shape[0], *([1] * (len(scores_shape) - 2)), tk))  # (B, 1, …, 1, Tk)
    if attn_mask is not None:
        am = attn_mask.data if isinstance(attn_mask, Tensor) else xp.asarray(attn_mask)
        if am.dtype != bool and am.dtype.kind != "f":
            raise TypeError(f"attn_mask must be boolean (True = masked out) or floating (added to the scores), "
                            f"got dtype {am.dtype} (shape {tuple(am.shape)}); for a 0/1 mask pass mask.astype(bool)")
        if am.shape[-2:] != (tq, tk) and am.shape[-2:] != (1, tk):
            raise ValueError(f"attn_mask's last two axes must be (Tq, Tk) = ({tq}, {tk}), got shape {tuple(am.shape)}")
        if am.dtype == bool:
            masks.append(am)
    if not masks:
        return None
    combined = masks[0]
    for m in masks[1:]:
        combined = combined | m
    return combined


# The composed path's form of each activation of the kernels' one table (kernels/activations.py), so that the
# composed and the fused paths accept the same names (tests/test_nn.py checks the keys are ACTIVATIONS).
_ACTIVATIONS = {"identity": lambda x: x, "relu": relu, "gelu": gelu,
                "gelu_tanh": lambda x: gelu(x, approximate="tanh")}


def feed_forward(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, activation: str = "relu",
                 dropout_p: float = 0.0, training: bool = True, fused: bool | None = None) -> Tensor:
    """FFN(x) = act(x W₁ᵀ + b₁) W₂ᵀ + b₂, applied to every position on its own (act = ReLU gives the
    paper's max(0, xW₁ + b₁)W₂ + b₂; weights stored (out, in) as in PyTorch).

    Shapes: x (…, D), w1 (F, D), b1 (F,), w2 (D, F), b2 (D,) -> (…, D). ``activation`` is a name of the
    kernels' table (kernels/activations.py): "identity", "relu", "gelu" (exact erf) or "gelu_tanh"; dropout
    with probability ``dropout_p`` acts on the hidden layer (…, F), as in ``torch.nn.TransformerEncoderLayer``.
    ``fused`` picks the implementation as in :func:`scaled_dot_product_attention` (the fused kernel has no
    dropout and needs both biases).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"feed_forward: activation must be one of {ACTIVATIONS}, got {activation!r}")
    dropping = dropout_p > 0 and training
    no_bias = b1 is None or b2 is None
    if _choose_fused(fused, not (dropping or no_bias), "dropout" if dropping else "a missing bias", "feed_forward"):
        lead = x.shape[:-1]
        y = FusedFeedForward.apply(x.reshape(-1, x.shape[-1]), w1, b1, w2, b2, activation=activation)  # (N, D)
        return y.reshape(*lead, w2.shape[0])
    hidden = _ACTIVATIONS[activation](linear(x, w1, b1))  # (…, F)
    return linear(dropout(hidden, dropout_p, training), w2, b2)  # (…, D)


_GATE_ACTIVATIONS = {**_ACTIVATIONS, "silu": silu}


def gated_feed_forward(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, activation: str = "silu",
                       b_gate: Tensor | None = None, b_up: Tensor | None = None,
                       b_down: Tensor | None = None) -> Tensor:
    """Gated FFN (Shazeer, 2020): FFN(x) = (act(x W_gateᵀ) ⊙ x W_upᵀ) W_downᵀ, biases optional.

    One hidden projection is passed through the activation and gates the other elementwise; with act =
    SiLU this is SwiGLU, Llama's feed-forward (with GELU, GeGLU). Shapes: x (…, D), w_gate and w_up (F, D),
    w_down (D, F) -> (…, D).
    """
    if activation not in _GATE_ACTIVATIONS:
        raise ValueError(f"gated_feed_forward: activation must be one of {tuple(_GATE_ACTIVATIONS)}, "
                         f"got {activation!r}")
    gate = _GATE_ACTIVATIONS[activation](linear(x, w_gate, b_gate))  # (…, F)
    return linear(gate * linear(x, w_up, b_up), w_down, b_down)  # (…, D)


# ------------------------------------------------------------------------------- masks and pooling


def padding_mask_from_attention_mask(attention_mask, shape: tuple | None = None, device: str | None = None,
                                     of: str = "input_ids"):
    """Hugging Face's attention_mask (B, T), 1 = real token, 0 = padding -> key_padding_mask (B, T), True =
    padding (masked out), the convention of :func:`scaled_dot_product_attention`. None stays None.

    ``attention_mask`` is an integer or boolean array, list or Tensor; ``shape`` (if given) is the (B, T) it
    must have (``of`` names what that shape belongs to, for the error message); ``device`` (if given) is where
    the result lives, else where the mask already is.
    """
    if attention_mask is None:
        return None
    mask = attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask
    mask = mask if hasattr(mask, "dtype") else np.asarray(mask)
    if mask.dtype.kind not in "iub":
        raise TypeError(f"attention_mask must hold integers (1 = real token, 0 = padding), got dtype {mask.dtype} "
                        f"(shape {tuple(mask.shape)})")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask must have the shape of {of} {tuple(shape)}, got {tuple(mask.shape)}")
    if device is not None:
        mask = backend.to_device(mask, device)
    return mask == 0


def mean_pool(hidden: Tensor, attention_mask) -> Tensor:
    """u = Σ_t m_t h_t / max(Σ_t m_t, 1): the mean of the hidden states over the real tokens (m_t = 1).

    hidden (B, T, D), attention_mask (B, T) with 1 = real token, 0 = padding -> (B, D). A row without real
    tokens divides by 1, not 0, and gives the zero vector.
    """
    xp = hidden.xp
    mask = attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask
    mask = xp.asarray(mask).astype(hidden.dtype)[:, :, None]  # (B, T, 1)
    counts = xp.maximum(mask.sum(axis=1), 1)  # (B, 1)
    return (hidden * Tensor(mask)).sum(axis=1) / Tensor(counts)  # (B, D)
