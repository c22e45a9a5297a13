"""What users call: ``import minitx.functional as F``.

Thin, documented wrappers over the ops in :mod:`minitx.ops`, each op with its own backward (``linear`` is
one of them: ``ops.Linear``), plus functions composed from those ops: ``split`` (slices), and
``scaled_dot_product_attention`` and ``feed_forward``, which read like the equations and get their gradients
from the ops they are made of. On the fused path (``fused=True``, or :func:`set_fused_kernels`) those two are
instead one op each (:mod:`minitx.ops.fused`), with its own backward.
"""

from __future__ import annotations

import contextlib
import math

from . import ops
from .ops.fused import FusedAttention, FusedFeedForward
from .tensor import Tensor

# ------------------------------------------------------------------------------------ fused-kernel switch
_use_fused = False


def set_fused_kernels(enabled: bool) -> None:
    """Make attention and the FFN use the fused kernels (``kernels/``) by default, or the composed ops."""
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


def tanh(x):
    return ops.Tanh.apply(x)


def sigmoid(x):
    return ops.Sigmoid.apply(x)


def relu(x):
    return ops.ReLU.apply(x)


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


def where(cond, a, b):
    return ops.Where.apply(cond, a, b)


def masked_fill(x, mask, value: float):
    return ops.MaskedFill.apply(x, mask, value=value)


# ---------------------------------------------------------------------------------------- neural network


def softmax(x, axis: int = -1):
    return ops.Softmax.apply(x, axis=axis)


def log_softmax(x, axis: int = -1):
    return ops.LogSoftmax.apply(x, axis=axis)


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


def layer_norm(x: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` axes, then scale by γ and shift by β."""
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[-len(normalized_shape):] != normalized_shape:
        raise ValueError(f"layer_norm: input shape {x.shape} does not end with normalized_shape {normalized_shape}")
    xp = x.xp
    weight = weight if weight is not None else Tensor(xp.ones(normalized_shape, dtype=x.dtype))
    bias = bias if bias is not None else Tensor(xp.zeros(normalized_shape, dtype=x.dtype))
    return ops.LayerNorm.apply(x, weight, bias, normalized_ndim=len(normalized_shape), eps=eps)


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p); identity when not training."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0:
        return x
    return ops.Dropout.apply(x, p=p)


def cross_entropy(logits: Tensor, target, ignore_index: int = -100, label_smoothing: float = 0.0,
                  reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``logits`` (…, C) against integer ``target`` (…).

    Classes are on the LAST axis (so (B, T, V) language-model logits go in as they are, with (B, T)
    targets); PyTorch puts them on axis 1.
    """
    target = target if isinstance(target, Tensor) else Tensor(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must hold integer class indices, got dtype {target.dtype} "
                        f"(shape {target.shape})")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: target shape {target.shape} must equal logits shape without its class "
                         f"axis, {logits.shape[:-1]} (logits {logits.shape})")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return ops.CrossEntropy.apply(logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing,
                                  reduction=reduction)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask=None, key_padding_mask=None,
                                 is_causal: bool = False, dropout_p: float = 0.0, training: bool = True,
                                 scale: float | None = None, return_weights: bool = False,
                                 fused: bool | None = None):
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
    the global setting (None, see :func:`set_fused_kernels`).
    """
    unsupported = [name for name, used in (("attn_mask", attn_mask is not None), ("return_weights", return_weights),
                                           ("dropout", dropout_p > 0 and training),
                                           ("inputs that are not (B, H, T, d)", q.ndim != 4)) if used]
    if _choose_fused(fused, not unsupported, ", ".join(unsupported), "scaled_dot_product_attention"):
        kpm = key_padding_mask.data if isinstance(key_padding_mask, Tensor) else key_padding_mask
        return FusedAttention.apply(q, k, v, key_padding_mask=kpm, causal=is_causal, scale=scale)
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


_ACTIVATIONS = {"relu": relu, "gelu": gelu, "gelu_tanh": lambda x: gelu(x, approximate="tanh")}


def feed_forward(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, activation: str = "relu",
                 dropout_p: float = 0.0, training: bool = True, fused: bool | None = None) -> Tensor:
    """FFN(x) = act(x W₁ᵀ + b₁) W₂ᵀ + b₂, applied to every position on its own (act = ReLU gives the
    paper's max(0, xW₁ + b₁)W₂ + b₂; weights stored (out, in) as in PyTorch).

    Shapes: x (…, D), w1 (F, D), b1 (F,), w2 (D, F), b2 (D,) -> (…, D). ``activation`` is "relu", "gelu"
    (exact erf) or "gelu_tanh"; dropout with probability ``dropout_p`` acts on the hidden layer (…, F), as
    in ``torch.nn.TransformerEncoderLayer``. ``fused`` picks the implementation as in
    :func:`scaled_dot_product_attention` (the fused kernel has no dropout).
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"feed_forward: activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
    dropping = dropout_p > 0 and training
    if _choose_fused(fused, not dropping, "dropout", "feed_forward"):
        lead = x.shape[:-1]
        y = FusedFeedForward.apply(x.reshape(-1, x.shape[-1]), w1, b1, w2, b2, activation=activation)  # (N, D)
        return y.reshape(*lead, w2.shape[0])
    hidden = _ACTIVATIONS[activation](linear(x, w1, b1))  # (…, F)
    return linear(dropout(hidden, dropout_p, training), w2, b2)  # (…, D)
