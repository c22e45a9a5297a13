"""Shared test helpers for the autograd engine: one registry of op cases, used twice.

Each :class:`OpCase` knows how to draw inputs for one op (with Hypothesis: shapes with size-1 and broadcast
axes, values kept away from the op's non-differentiable points), how to call the op in minitx, and how to
call the same thing in PyTorch. ``test_gradcheck.py`` checks every case's backward against finite
differences in float64; ``test_ops.py`` checks forward and backward against PyTorch in float32 and float64.

Inputs are NumPy arrays: floating arrays are the differentiable inputs, integer and boolean arrays
(ids, targets, masks) are constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import minitx as mx
import minitx.functional as F
from minitx.data.fetch import FetchError

# Small and deterministic: every run draws the same examples, so the suite's runtime is stable.
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TOLERANCES = {  # (rtol, atol) for comparing with PyTorch
    np.float32: (1e-5, 1e-6),
    np.float64: (1e-10, 1e-12),
}


# ------------------------------------------------------------------------------------- drawing values
def seed():
    return st.integers(0, 2**32 - 1)


def normal(rng, shape):
    return rng.standard_normal(shape)


def fetched_or_skip(fetch, what: str):
    """``fetch()``'s result, or skip the calling test when ``what`` cannot be fetched on this machine."""
    try:
        return fetch()
    except FetchError as e:
        pytest.skip(f"could not fetch {what}: {e}")


def away_from_zero(rng, shape, low=0.25, high=2.0):
    """|x| in [low, high] with a random sign: keeps relu, abs and 1/x away from 0."""
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


def positive(rng, shape, low=0.5, high=2.0):
    return rng.uniform(low, high, shape)


def distinct(rng, shape):
    """Values at least 0.2 apart, so a max has no ties and a small perturbation cannot reorder them."""
    n = int(np.prod(shape, dtype=int))
    return (rng.permutation(n) * 0.25 + rng.uniform(0, 0.05, n)).reshape(shape) - 0.125 * n


def shapes(min_dims=0, max_dims=3, min_side=1, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcast_shapes(n=2, min_dims=0, max_dims=3, max_side=3):
    """``n`` shapes that broadcast together (sizes of 1 and missing leading axes included)."""
    return hnp.mutually_broadcastable_shapes(num_shapes=n, min_dims=min_dims, max_dims=max_dims,
                                             min_side=1, max_side=max_side).map(lambda s: s.input_shapes)


@st.composite
def axis_args(draw, ndim):
    """``axis`` (None, an int or a tuple, negatives included) and ``keepdims`` for a reduction."""
    kind = draw(st.sampled_from(["none", "int", "tuple"] if ndim else ["none"]))
    if kind == "none":
        axis = None
    elif kind == "int":
        axis = draw(st.integers(-ndim, ndim - 1))
    else:
        axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
        axis = tuple(a - ndim if draw(st.booleans()) else a for a in axes)
    return axis, draw(st.booleans())


def torch_dims(axis, ndim):
    return tuple(range(ndim)) if axis is None else axis


# ------------------------------------------------------------------------------------------ the cases
@dataclass
class OpCase:
    """One op: ``draw(data) -> (arrays, kwargs)``, ``mx_fn(*tensors, **kwargs)``, ``torch_fn(*tensors, **kwargs)``."""

    name: str
    draw: object
    mx_fn: object
    torch_fn: object
    tags: set = field(default_factory=set)

    def __repr__(self):
        return self.name


CASES: list[OpCase] = []


def case(name, mx_fn, torch_fn, tags=()):
    """Decorator registering a drawing function as an op case."""

    def register(draw):
        CASES.append(OpCase(name, draw, mx_fn, torch_fn, set(tags)))
        return draw

    return register


def _torch():
    import torch

    return torch


def _tF():
    import torch.nn.functional as tF

    return tF


def _binary(name, mx_op, torch_op, values_a=normal, values_b=normal):
    @case(name, mx_op, torch_op)
    def draw(data):
        shape_a, shape_b = data.draw(broadcast_shapes(2))
        rng = np.random.default_rng(data.draw(seed()))
        return [values_a(rng, shape_a), values_b(rng, shape_b)], {}


_binary("add", lambda a, b: a + b, lambda a, b: a + b)
_binary("sub", lambda a, b: a - b, lambda a, b: a - b)
_binary("mul", lambda a, b: a * b, lambda a, b: a * b)
_binary("div", lambda a, b: a / b, lambda a, b: a / b, values_b=away_from_zero)
_binary("pow", lambda a, b: a**b, lambda a, b: a**b, values_a=positive, values_b=normal)


def _unary(name, mx_op, torch_op, values=normal):
    @case(name, mx_op, torch_op)
    def draw(data):
        rng = np.random.default_rng(data.draw(seed()))
        return [values(rng, data.draw(shapes()))], {}


_unary("neg", lambda x: -x, lambda x: -x)
_unary("exp", lambda x: x.exp(), lambda x: x.exp())
_unary("log", lambda x: x.log(), lambda x: x.log(), positive)
_unary("sqrt", lambda x: x.sqrt(), lambda x: x.sqrt(), positive)
_unary("tanh", lambda x: x.tanh(), lambda x: x.tanh())
_unary("sigmoid", lambda x: x.sigmoid(), lambda x: x.sigmoid())
_unary("relu", lambda x: x.relu(), lambda x: x.relu(), away_from_zero)
_unary("abs", lambda x: x.abs(), lambda x: x.abs(), away_from_zero)
_unary("gelu", lambda x: F.gelu(x), lambda x: _tF().gelu(x))
_unary("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), lambda x: _tF().gelu(x, approximate="tanh"))
_unary("pow_scalar", lambda x: x**3, lambda x: x**3)
_unary("rpow_scalar", lambda x: 2.0**x, lambda x: 2.0**x)
_unary("scalar_arith", lambda x: (3 - x) * 0.5 / (x * x + 1) + 1,
       lambda x: (3 - x) * 0.5 / (x * x + 1) + 1)


def _reduction(name, mx_op, torch_op, values=normal):
    @case(name, mx_op, torch_op)
    def draw(data):
        shape = data.draw(shapes(min_dims=1))
        axis, keepdims = data.draw(axis_args(len(shape)))
        rng = np.random.default_rng(data.draw(seed()))
        return [values(rng, shape)], {"axis": axis, "keepdims": keepdims}


_reduction("sum", lambda x, axis, keepdims: x.sum(axis=axis, keepdims=keepdims),
           lambda x, axis, keepdims: x.sum(dim=torch_dims(axis, x.ndim), keepdim=keepdims))
_reduction("mean", lambda x, axis, keepdims: x.mean(axis=axis, keepdims=keepdims),
           lambda x, axis, keepdims: x.mean(dim=torch_dims(axis, x.ndim), keepdim=keepdims))
_reduction("max", lambda x, axis, keepdims: x.max(axis=axis, keepdims=keepdims),
           lambda x, axis, keepdims: x.amax(dim=torch_dims(axis, x.ndim), keepdim=keepdims), distinct)


@case("var", lambda x, axis, keepdims, correction: x.var(axis=axis, keepdims=keepdims, correction=correction),
      lambda x, axis, keepdims, correction: x.var(dim=torch_dims(axis, x.ndim), keepdim=keepdims,
                                                  correction=correction))
def _draw_var(data):
    shape = data.draw(shapes(min_dims=1, min_side=2))  # at least 2 elements per group: N - 1 > 0
    axis, keepdims = data.draw(axis_args(len(shape)))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape)], {"axis": axis, "keepdims": keepdims, "correction": data.draw(st.sampled_from([0, 1]))}


@case("matmul", lambda a, b: a @ b, lambda a, b: a @ b)
def _draw_matmul(data):
    """Batched with broadcasting batch axes; either operand may be a vector."""
    batch_a, batch_b = data.draw(broadcast_shapes(2, max_dims=2))
    m, k, n = data.draw(st.tuples(*[st.integers(1, 3)] * 3))
    shape_a = (k,) if data.draw(st.booleans()) and not batch_a else batch_a + (m, k)
    shape_b = (k,) if data.draw(st.booleans()) and not batch_b else batch_b + (k, n)
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape_a), normal(rng, shape_b)], {}


@case("matmul_transposed_right", lambda a, b: a @ b.transpose(-1, -2), lambda a, b: a @ b.transpose(-1, -2))
def _draw_matmul_transposed_right(data):
    """Stacked products whose right operand is a transposed view (like attention's Kᵀ), which MatMul copies."""
    batch = data.draw(st.sampled_from([(2,), (2, 3), (1, 2)]))
    m, k, n = data.draw(st.tuples(*[st.integers(1, 4)] * 3))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, batch + (m, k)), normal(rng, batch + (n, k))], {}


@case("linear", lambda x, w, b: F.linear(x, w, b),
      lambda x, w, b: _tF().linear(x, w, b))
def _draw_linear(data):
    """x (…, in) with zero to two leading axes, W (out, in), b (out,)."""
    lead = data.draw(st.sampled_from([(), (3,), (2, 3)]))
    n_in, n_out = data.draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, lead + (n_in,)), normal(rng, (n_out, n_in)), normal(rng, (n_out,))], {}


@case("reshape", lambda x, shape: x.reshape(shape), lambda x, shape: x.reshape(shape))
def _draw_reshape(data):
    shape = data.draw(shapes(min_dims=1))
    target = data.draw(st.sampled_from([(-1,), shape[::-1], (shape[0], -1), (1, -1, 1)]))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape)], {"shape": target}


@case("permute", lambda x, axes: x.permute(*axes), lambda x, axes: x.permute(*axes))
def _draw_permute(data):
    shape = data.draw(shapes(min_dims=1))
    axes = data.draw(st.permutations(range(len(shape))))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape)], {"axes": tuple(axes)}


@case("transpose", lambda x, d0, d1: x.transpose(d0, d1), lambda x, d0, d1: x.transpose(d0, d1))
def _draw_transpose(data):
    shape = data.draw(shapes(min_dims=2))
    d0, d1 = data.draw(st.tuples(*[st.integers(-len(shape), len(shape) - 1)] * 2))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape)], {"d0": d0, "d1": d1}


def _mx_getitem(x, *consts, kind, spec):
    index = tuple(mx.Tensor(c) for c in consts) if kind != "slices" else spec
    return x[index[0] if kind == "mask" else index]


def _torch_getitem(x, *consts, kind, spec):
    torch = _torch()
    index = tuple(torch.as_tensor(c) for c in consts) if kind != "slices" else spec
    return x[index[0] if kind == "mask" else index]


@case("getitem", lambda x, *c, kind, spec: _mx_getitem(x, *c, kind=kind, spec=spec),
      lambda x, *c, kind, spec: _torch_getitem(x, *c, kind=kind, spec=spec))
def _draw_getitem(data):
    """Slices (positive steps, as PyTorch allows), integer arrays with repeats, or a boolean mask."""
    shape = data.draw(shapes(min_dims=1))
    rng = np.random.default_rng(data.draw(seed()))
    kind = data.draw(st.sampled_from(["slices", "ints", "ints2", "mask"]))
    x = normal(rng, shape)
    if kind == "slices":
        spec = tuple(slice(data.draw(st.integers(-n, n)), data.draw(st.none() | st.integers(-n, n)),
                           data.draw(st.integers(1, 2))) for n in shape)
        return [x], {"kind": kind, "spec": spec}
    if kind == "ints":  # x[ids] along axis 0, repeats guaranteed, negative indices allowed
        ids = rng.integers(-shape[0], shape[0], size=data.draw(st.integers(1, 5)))
        return [x, np.concatenate([ids, ids[:1]])], {"kind": kind, "spec": None}
    if kind == "ints2":  # x[rows, cols] pairs (advanced indexing on two axes at once), a repeated pair
        if len(shape) < 2:
            x = normal(rng, shape + (3,))
        rows = rng.integers(0, x.shape[0], size=4)
        cols = rng.integers(0, x.shape[1], size=4)
        return [x, np.append(rows, rows[0]), np.append(cols, cols[0])], {"kind": kind, "spec": None}
    mask_ndim = data.draw(st.integers(1, len(shape)))
    mask = rng.random(shape[:mask_ndim]) < 0.5
    return [x, mask], {"kind": kind, "spec": None}


@case("concat", lambda *xs, axis: F.concat(xs, axis=axis), lambda *xs, axis: _torch().cat(xs, dim=axis))
def _draw_concat(data):
    shape = data.draw(shapes(min_dims=1))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(data.draw(seed()))
    xs = []
    for _ in range(data.draw(st.integers(2, 3))):
        s = list(shape)
        s[axis] = data.draw(st.integers(1, 3))
        xs.append(normal(rng, tuple(s)))
    return xs, {"axis": axis}


@case("stack", lambda *xs, axis: F.stack(xs, axis=axis), lambda *xs, axis: _torch().stack(xs, dim=axis))
def _draw_stack(data):
    shape = data.draw(shapes())
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape) for _ in range(data.draw(st.integers(1, 3)))], {"axis": axis}


def _weighted_concat(pieces, cat, axis):
    """Join the pieces again, each times a different weight, so every piece's gradient is distinct."""
    return cat([p * float(i + 1) for i, p in enumerate(pieces)], axis)


@case("split", lambda x, sizes, axis: _weighted_concat(F.split(x, sizes, axis), lambda ps, a: F.concat(ps, a), axis),
      lambda x, sizes, axis: _weighted_concat(_torch().split(x, sizes, axis), lambda ps, a: _torch().cat(ps, a), axis))
def _draw_split(data):
    shape = data.draw(shapes(min_dims=1))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis]
    if data.draw(st.booleans()):
        sizes = data.draw(st.integers(1, n))
    else:
        cut = sorted(data.draw(st.lists(st.integers(0, n), max_size=2)))
        bounds = [0, *cut, n]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape)], {"sizes": sizes, "axis": axis}


@case("where", lambda a, b, cond: F.where(mx.Tensor(cond), a, b), lambda a, b, cond: _torch().where(_torch().as_tensor(cond), a, b))
def _draw_where(data):
    shape_c, shape_a, shape_b = data.draw(broadcast_shapes(3))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape_a), normal(rng, shape_b), rng.random(shape_c) < 0.5], {}


@case("masked_fill", lambda x, mask, value: x.masked_fill(mx.Tensor(mask), value),
      lambda x, mask, value: x.masked_fill(_torch().as_tensor(mask), value))
def _draw_masked_fill(data):
    shape = data.draw(shapes())
    # the mask: x's shape with some axes set to 1 and possibly fewer leading axes
    mask_shape = tuple(1 if data.draw(st.booleans()) else n for n in shape)[data.draw(st.integers(0, len(shape))):]
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape), rng.random(mask_shape) < 0.5], {"value": data.draw(st.sampled_from([0.0, -1.5, 1e4]))}


@case("embedding", lambda w, ids: F.embedding(mx.Tensor(ids), w),
      lambda w, ids: _tF().embedding(_torch().as_tensor(ids), w))
def _draw_embedding(data):
    vocab, dim = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    ids_shape = data.draw(shapes(max_dims=2))
    rng = np.random.default_rng(data.draw(seed()))
    ids = rng.integers(0, vocab, ids_shape)
    if ids.size:
        ids.reshape(-1)[-1] = ids.reshape(-1)[0]  # at least one repeated id when there are two positions
    return [normal(rng, (vocab, dim)), ids], {}


def _along_axis(name, mx_op, torch_op):
    @case(name, mx_op, torch_op)
    def draw(data):
        shape = data.draw(shapes(min_dims=1))
        axis = data.draw(st.integers(-len(shape), len(shape) - 1))
        rng = np.random.default_rng(data.draw(seed()))
        return [2 * normal(rng, shape)], {"axis": axis}


_along_axis("softmax", lambda x, axis: F.softmax(x, axis), lambda x, axis: x.softmax(axis))
_along_axis("log_softmax", lambda x, axis: F.log_softmax(x, axis), lambda x, axis: x.log_softmax(axis))


@case("layer_norm", lambda x, *wb, ndim: F.layer_norm(x, x.shape[x.ndim - ndim:], *wb),
      lambda x, *wb, ndim: _tF().layer_norm(x, x.shape[x.ndim - ndim:], *wb))
def _draw_layer_norm(data, **sides):
    """Normalised over 1 or 2 trailing axes, with or without an affine weight and bias."""
    shape = data.draw(shapes(min_dims=1, **(sides or {"min_side": 2})))
    ndim = data.draw(st.integers(1, min(2, len(shape))))
    rng = np.random.default_rng(data.draw(seed()))
    arrays = [normal(rng, shape)]
    if data.draw(st.booleans()):
        arrays += [normal(rng, shape[-ndim:]), normal(rng, shape[-ndim:])]
    return arrays, {"ndim": ndim}


@case("layer_norm_composed", lambda x, *wb, ndim: F.layer_norm(x, x.shape[x.ndim - ndim:], *wb, fused=False),
      lambda x, *wb, ndim: _tF().layer_norm(x, x.shape[x.ndim - ndim:], *wb))
def _draw_layer_norm_composed(data):
    """The layer_norm draw on the composed path (``ops.LayerNorm``; the default path of one axis is fused), with
    rows of at least 4 features: a row of 2 normalises to ±1 whatever x, so its gradient is rounding noise
    (~1e-4 of eps terms) that ``ops.LayerNorm`` and PyTorch round differently in float32 by more than atol."""
    return _draw_layer_norm(data, min_side=4, max_side=5)


def _add_layer_norm(x, r, *wb, fused=None):
    return F.layer_norm(x, x.shape[-1:], *wb, residual=r, fused=fused)


@case("add_layer_norm", _add_layer_norm, lambda x, r, *wb, fused: _tF().layer_norm(x + r, x.shape[-1:], *wb))
def _draw_add_layer_norm(data):
    """LayerNorm(x + residual) over the last axis, fused (the default) or composed, with or without affine;
    rows of at least 4 features, as in the composed draw above."""
    shape = data.draw(shapes(min_dims=1, min_side=4, max_side=5))
    rng = np.random.default_rng(data.draw(seed()))
    arrays = [normal(rng, shape), normal(rng, shape)]
    if data.draw(st.booleans()):
        arrays += [normal(rng, shape[-1:]), normal(rng, shape[-1:])]
    return arrays, {"fused": data.draw(st.sampled_from([None, False]))}


def _ce_torch(logits, target, **kw):
    tF = _tF()
    c = logits.shape[-1]
    loss = tF.cross_entropy(logits.reshape(-1, c), _torch().as_tensor(target).reshape(-1), **kw)
    return loss.reshape(target.shape) if kw["reduction"] == "none" else loss


@case("cross_entropy", lambda logits, target, **kw: F.cross_entropy(logits, mx.Tensor(target), **kw), _ce_torch)
def _draw_cross_entropy(data):
    """Classes on the last axis; some targets ignored (but never all, which would make "mean" NaN)."""
    shape = data.draw(shapes(max_dims=2))
    classes = data.draw(st.integers(2, 4))
    rng = np.random.default_rng(data.draw(seed()))
    target = rng.integers(0, classes, shape)
    ignore_index = data.draw(st.sampled_from([-100, 1]))
    if target.size > 1:
        drop = rng.random(shape) < 0.3
        drop.reshape(-1)[0] = False
        target = np.where(drop, ignore_index, target)
        if ignore_index >= 0:  # the one valid position must not hold the ignored class itself
            target.reshape(-1)[0] = 0
    elif ignore_index >= 0:
        target = np.zeros(shape, dtype=np.int64)
    kwargs = {"ignore_index": ignore_index, "label_smoothing": data.draw(st.sampled_from([0.0, 0.1])),
              "reduction": data.draw(st.sampled_from(["mean", "sum", "none"]))}
    return [2 * normal(rng, shape + (classes,)), target], kwargs


def _attention_mask(kpm, attn, causal, tq, tk):
    """The combined boolean mask (True = masked out), built independently of minitx's ``combine_masks``."""
    mask = np.zeros((tq, tk), dtype=bool)
    if causal:  # end-aligned: query i sees keys j <= i + (tk - tq)
        mask = np.arange(tk)[None, :] > np.arange(tq)[:, None] + (tk - tq)
    if attn is not None and attn.dtype == bool:
        mask = mask | attn
    if kpm is not None:
        mask = mask | kpm[:, None, None, :]
    return mask


def _mx_sdpa(q, k, v, *consts, causal, kinds):
    consts = dict(zip(kinds, consts))
    attn = consts.get("attn", consts.get("bias"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn, key_padding_mask=consts.get("kpm"),
                                          is_causal=causal, fused=False)


def _torch_sdpa(q, k, v, *consts, causal, kinds):
    """PyTorch's attention with one additive mask (its boolean masks mean the opposite: True = attend)."""
    torch = _torch()
    consts = dict(zip(kinds, consts))
    mask = _attention_mask(consts.get("kpm"), consts.get("attn"), causal, q.shape[-2], k.shape[-2])
    bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(torch.as_tensor(mask), -math.inf)
    if "bias" in consts:
        bias = bias + consts["bias"]
    return _tF().scaled_dot_product_attention(q, k, v, attn_mask=bias)


@case("attention", _mx_sdpa, _torch_sdpa)
def _draw_attention(data):
    """q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) with Tq <= Tk; boolean attn mask, float attn
    mask (a learnable bias: a differentiable input), key padding and causal masks in any combination. Key 0
    is never masked, so no row is empty (PyTorch gives NaN for an empty row, minitx zeros; that case has its
    own test)."""
    b, h, tq, d = (data.draw(st.integers(1, 2)) for _ in range(4))
    tk, dv = tq + data.draw(st.integers(0, 2)), data.draw(st.integers(1, 2))
    rng = np.random.default_rng(data.draw(seed()))
    arrays = [normal(rng, (b, h, tq, d)), normal(rng, (b, h, tk, d)), normal(rng, (b, h, tk, dv))]
    kinds = []  # what each array after q, k, v is: boolean masks are constants, the float bias an input
    attn_kind = data.draw(st.sampled_from(["none", "bool", "float"]))
    if attn_kind == "bool":
        attn = rng.random((tq, tk)) < 0.4
        attn[:, 0] = False
        arrays.append(attn)
        kinds.append("attn")
    elif attn_kind == "float":
        arrays.append(normal(rng, (tq, tk)))
        kinds.append("bias")
    if data.draw(st.booleans()):
        kpm = rng.random((b, tk)) < 0.4
        kpm[:, 0] = False
        arrays.append(kpm)
        kinds.append("kpm")
    return arrays, {"causal": data.draw(st.booleans()), "kinds": tuple(kinds)}


_unary("silu", lambda x: F.silu(x), lambda x: _tF().silu(x))


@case("rms_norm", lambda x, *w, ndim, eps: F.rms_norm(x, x.shape[x.ndim - ndim:], *w, eps=eps),
      lambda x, *w, ndim, eps: _tF().rms_norm(x, x.shape[x.ndim - ndim:], *w, eps=eps))
def _draw_rms_norm(data):
    """Normalised over 1 or 2 trailing axes, with or without a weight; ε large and small."""
    shape = data.draw(shapes(min_dims=1))
    ndim = data.draw(st.integers(1, min(2, len(shape))))
    rng = np.random.default_rng(data.draw(seed()))
    arrays = [normal(rng, shape)]
    if data.draw(st.booleans()):
        arrays.append(normal(rng, shape[-ndim:]))
    return arrays, {"ndim": ndim, "eps": data.draw(st.sampled_from([1e-6, 0.1]))}


def _torch_rotary(x, angle, interleaved):
    """The rotation by a torch route of its own: Hugging Face's x·cos + rotate_half(x)·sin, or (interleaved)
    the product of each adjacent pair, read as a complex number, with e^{iθ} (Meta's reference Llama)."""
    torch = _torch()
    angle = torch.as_tensor(angle)
    if interleaved:
        pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
        turned = pairs * torch.polar(torch.ones_like(angle), angle).to(pairs.dtype)
        return torch.view_as_real(turned).reshape(x.shape)
    half = x.shape[-1] // 2
    cos, sin = torch.cat([angle.cos()] * 2, -1).to(x.dtype), torch.cat([angle.sin()] * 2, -1).to(x.dtype)
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


@case("rotary", lambda x, angle, interleaved: F.rotary_embedding(x, np.cos(angle), np.sin(angle), interleaved),
      _torch_rotary)
def _draw_rotary(data):
    """x (…, T, d), d even, and one angle per position and pair (T, d/2), in both layouts."""
    lead = data.draw(st.sampled_from([(), (2,), (2, 3)]))
    steps, half = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, lead + (steps, 2 * half))], {"angle": rng.uniform(-4, 4, (steps, half)),
                                                      "interleaved": data.draw(st.booleans())}


@case("repeat_interleave", lambda x, repeats, axis: F.repeat_interleave(x, repeats, axis),
      lambda x, repeats, axis: _torch().repeat_interleave(x, repeats, dim=axis))
def _draw_repeat_interleave(data):
    shape = data.draw(shapes(min_dims=1))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape)], {"repeats": data.draw(st.integers(1, 3)),
                                  "axis": data.draw(st.integers(-len(shape), len(shape) - 1))}


@case("attention_gqa",
      lambda q, k, v, causal: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True, fused=False),
      lambda q, k, v, causal: _tF().scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True))
def _draw_attention_gqa(data):
    """Grouped-query attention: q (B, H, T, d), k and v (B, H_kv, T, d), H = g·H_kv (g = 1 included)."""
    b, kv_heads, group, t, d = (data.draw(st.integers(1, n)) for n in (2, 2, 3, 3, 2))
    rng = np.random.default_rng(data.draw(seed()))
    q = normal(rng, (b, kv_heads * group, t, d))
    return [q, normal(rng, (b, kv_heads, t, d)), normal(rng, (b, kv_heads, t, d))], {"causal": data.draw(st.booleans())}


@case("gated_feed_forward", lambda x, wg, wu, wd: F.gated_feed_forward(x, wg, wu, wd),
      lambda x, wg, wu, wd: (_tF().silu(x @ wg.T) * (x @ wu.T)) @ wd.T)
def _draw_gated_feed_forward(data):
    """SwiGLU: x (…, D), W_gate and W_up (F, D), W_down (D, F)."""
    lead = data.draw(st.sampled_from([(), (3,), (2, 3)]))
    d, f = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, lead + (d,)), normal(rng, (f, d)), normal(rng, (f, d)), normal(rng, (d, f))], {}


# ------------------------------------------------------------------ issue 16: the ops PyTorch users reach for
_binary("maximum", lambda a, b: F.maximum(a, b), lambda a, b: _torch().maximum(a, b))
_binary("minimum", lambda a, b: a.minimum(b), lambda a, b: _torch().minimum(a, b))
_unary("sin", lambda x: x.sin(), lambda x: x.sin())
_unary("cos", lambda x: F.cos(x), lambda x: x.cos())
_unary("rsqrt", lambda x: x.rsqrt(), lambda x: x.rsqrt(), positive)
_reduction("min", lambda x, axis, keepdims: x.min(axis=axis, keepdims=keepdims),
           lambda x, axis, keepdims: x.amin(dim=torch_dims(axis, x.ndim), keepdim=keepdims), distinct)
_reduction("logsumexp", lambda x, axis, keepdims: x.logsumexp(axis, keepdims=keepdims),
           lambda x, axis, keepdims: x.logsumexp(dim=torch_dims(axis, x.ndim), keepdim=keepdims))


def _torch_prod(x, axis, keepdims):
    """torch.prod takes one dim at a time."""
    axes = range(x.ndim) if axis is None else sorted(a % x.ndim for a in ((axis,) if isinstance(axis, int) else axis))
    out = x
    for a in reversed(list(axes)):
        out = out.prod(dim=a, keepdim=True)
    return out if keepdims else out.reshape([n for i, n in enumerate(x.shape) if i not in axes])


_reduction("prod", lambda x, axis, keepdims: x.prod(axis=axis, keepdims=keepdims), _torch_prod, away_from_zero)


@case("std", lambda x, axis, keepdims, correction: x.std(axis=axis, keepdims=keepdims, correction=correction),
      lambda x, axis, keepdims, correction: x.std(dim=torch_dims(axis, x.ndim), keepdim=keepdims,
                                                  correction=correction))
def _draw_std(data):
    return _draw_var(data)


_along_axis("cumsum", lambda x, axis: x.cumsum(axis), lambda x, axis: x.cumsum(axis))


@case("clamp", lambda x, low, high: x.clamp(min=low, max=high), lambda x, low, high: x.clamp(min=low, max=high))
def _draw_clamp(data):
    rng = np.random.default_rng(data.draw(seed()))
    low, high = data.draw(st.sampled_from([(-0.5, None), (None, 0.3), (-0.5, 0.5), (0.2, -0.2)]))
    return [normal(rng, data.draw(shapes()))], {"low": low, "high": high}


@case("leaky_relu", lambda x, slope: F.leaky_relu(x, slope), lambda x, slope: _tF().leaky_relu(x, slope))
def _draw_leaky_relu(data):
    rng = np.random.default_rng(data.draw(seed()))
    return [away_from_zero(rng, data.draw(shapes()))], {"slope": data.draw(st.sampled_from([0.01, 0.2, -0.5]))}


@case("softplus", lambda x, **kw: F.softplus(x, **kw), lambda x, **kw: _tF().softplus(x, **kw))
def _draw_softplus(data):
    """The default threshold (20), and a low one that sends some elements down the linear branch."""
    rng = np.random.default_rng(data.draw(seed()))
    beta, threshold = data.draw(st.sampled_from([(1.0, 20.0), (2.0, 1.0), (0.5, 20.0)]))
    return [3 * normal(rng, data.draw(shapes()))], {"beta": beta, "threshold": threshold}


@case("normalize", lambda x, p, axis: F.normalize(x, p, axis), lambda x, p, axis: _tF().normalize(x, p, axis))
def _draw_normalize(data):
    shape = data.draw(shapes(min_dims=1))
    rng = np.random.default_rng(data.draw(seed()))
    return [away_from_zero(rng, shape)], {"p": data.draw(st.sampled_from([1.0, 2.0, 3.0])),
                                          "axis": data.draw(st.integers(-len(shape), len(shape) - 1))}


@case("expand", lambda x, shape: x.expand(shape), lambda x, shape: x.expand(shape))
def _draw_expand(data):
    """Size-1 axes grow, other axes keep their size (given as itself or -1), new leading axes appear."""
    shape = data.draw(shapes(max_side=3))
    lead = data.draw(st.lists(st.integers(1, 3), max_size=2))
    target = [data.draw(st.integers(1, 3)) if n == 1 else data.draw(st.sampled_from([n, -1])) for n in shape]
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape)], {"shape": tuple(lead + target)}


@case("squeeze", lambda x, axis: x.squeeze(axis), lambda x, axis: x.squeeze() if axis is None else x.squeeze(axis))
def _draw_squeeze(data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=2))
    ones = [i for i, n in enumerate(shape) if n == 1]
    axis = data.draw(st.sampled_from([None] + ones))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape)], {"axis": axis}


@case("flatten", lambda x, start, end: x.flatten(start, end), lambda x, start, end: x.flatten(start, end))
def _draw_flatten(data):
    shape = data.draw(shapes(min_dims=1, max_dims=4))
    start = data.draw(st.integers(0, len(shape) - 1))
    end = data.draw(st.integers(start, len(shape) - 1))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape)], {"start": start - len(shape) * data.draw(st.booleans()), "end": end}


@case("chunk", lambda x, chunks, axis: _weighted_concat(x.chunk(chunks, axis), lambda ps, a: F.concat(ps, a), axis),
      lambda x, chunks, axis: _weighted_concat(x.chunk(chunks, axis), lambda ps, a: _torch().cat(ps, a), axis))
def _draw_chunk(data):
    shape = data.draw(shapes(min_dims=1, max_side=6))
    rng = np.random.default_rng(data.draw(seed()))
    return [normal(rng, shape)], {"chunks": data.draw(st.integers(1, 5)),
                                  "axis": data.draw(st.integers(-len(shape), len(shape) - 1))}


def _triangle(name):
    @case(name, lambda x, k: getattr(x, name)(k), lambda x, k: getattr(x, name)(k))
    def draw(data):
        shape = data.draw(shapes(min_dims=2))
        rng = np.random.default_rng(data.draw(seed()))
        return [normal(rng, shape)], {"k": data.draw(st.integers(-2, 2))}


_triangle("tril")
_triangle("triu")


@case("gather", lambda x, index, axis: x.gather(axis, mx.Tensor(index)),
      lambda x, index, axis: x.gather(axis, _torch().as_tensor(index)))
def _draw_gather(data):
    """Any number of picks along ``axis`` (repeats likely), and an index no longer than x on the other axes."""
    shape = data.draw(shapes(min_dims=1))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    index_shape = [data.draw(st.integers(1, n)) for n in shape]
    index_shape[axis] = data.draw(st.integers(1, 5))
    rng = np.random.default_rng(data.draw(seed()))
    index = rng.integers(0, shape[axis], index_shape)
    return [normal(rng, shape), index], {"axis": axis}


def _nll_torch(logp, target, **kw):
    c = logp.shape[-1]
    loss = _tF().nll_loss(logp.reshape(-1, c), _torch().as_tensor(target).reshape(-1), **kw)
    return loss.reshape(target.shape) if kw["reduction"] == "none" else loss


@case("nll_loss", lambda logp, target, **kw: F.nll_loss(logp, target, **kw), _nll_torch)
def _draw_nll_loss(data):
    """The cross-entropy draw (some targets ignored, never all), without label smoothing."""
    arrays, kwargs = _draw_cross_entropy(data)
    del kwargs["label_smoothing"]
    return arrays, kwargs


@case("cross_entropy_composed",
      lambda logits, target, **kw: F.cross_entropy(logits, mx.Tensor(target), fused=False, **kw), _ce_torch)
def _draw_cross_entropy_composed(data):
    """The cross-entropy draw on the composed path (``ops.CrossEntropy``; the default path is fused)."""
    return _draw_cross_entropy(data)


CASES_BY_NAME = {c.name: c for c in CASES}


# --------------------------------------------------------------------------------- running the cases
def is_input(array) -> bool:
    """Floating arrays are the differentiable inputs; integer and boolean arrays are constants."""
    return array.dtype.kind == "f"


def run_minitx(case_, arrays, kwargs, dtype, upstream_seed=0):
    """Forward, then backward of a random upstream gradient: (output array, upstream, [input grads])."""
    inputs = [mx.Tensor(a.astype(dtype), requires_grad=True) if is_input(a) else a for a in arrays]
    out = case_.mx_fn(*inputs, **kwargs)
    upstream = np.random.default_rng(upstream_seed).standard_normal(out.shape).astype(dtype)
    out.backward(upstream)
    grads = [t.grad for t in inputs if isinstance(t, mx.Tensor)]
    return out, upstream, grads, inputs


def run_torch(case_, arrays, kwargs, dtype, upstream):
    torch = _torch()
    inputs = [torch.tensor(a.astype(dtype), requires_grad=True) if is_input(a) else a for a in arrays]
    out = case_.torch_fn(*inputs, **kwargs)
    out.backward(torch.as_tensor(upstream))
    grads = [t.grad for t in inputs if isinstance(t, torch.Tensor)]
    return out, grads


def assert_close(actual, expected, dtype, what):
    rtol, atol = TOLERANCES[np.dtype(dtype).type]
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def import_chapter(tutorials, stem: str, out, **environment):
    """Import tutorials/``stem``.py as a module in quick mode, its figures written under ``out``, with the extra
    ``environment`` variables set while it runs; returns it."""
    import importlib.util
    import sys

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINITX_QUICK", "1")
        mp.setenv("MINITX_TUTORIAL_OUT", str(out))
        for name, value in environment.items():
            mp.setenv(name, value)
        mp.chdir(out)
        mp.syspath_prepend(str(tutorials))
        sys.modules.pop("_common", None)  # re-read MINITX_QUICK
        spec = importlib.util.spec_from_file_location(f"tutorial_{stem}", tutorials / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module
