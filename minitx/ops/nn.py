"""Neural-network ops with hand-derived backward passes: softmax, log-softmax, layer norm, RMS norm, the
rotary position embedding, dropout, cross-entropy and the embedding lookup.

Each of these could be composed from the primitive ops, but a fused op saves memory (one saved array
instead of a chain of them) and its backward formula is worth reading on its own.
"""

from __future__ import annotations

from .. import backend
from ..backend import get_array_module
from ..tensor import Function
from ._util import as_float, expand_reduced, normalize_axes


def _stable_softmax(x, axis):
    """softmax(x) = exp(x - max x) / Σ exp(x - max x): subtracting the max changes nothing mathematically
    (it cancels) but keeps exp from overflowing.

    A row whose entries are all -inf (an attention row with every key masked) has no distribution; we
    define its softmax as all zeros, so masked attention gives a zero output and zero gradients, never NaN.
    """
    xp = get_array_module(x)
    m = x.max(axis=axis, keepdims=True)
    e = x - xp.where(m == -xp.inf, x.dtype.type(0), m)  # all -inf row: exp(-inf) = 0 everywhere
    e = xp.asarray(e)  # a 0-d x gives a NumPy scalar here, which out= below cannot write into
    xp.exp(e, out=e)  # in place, here and below: one new array instead of three (they are large in attention)
    total = e.sum(axis=axis, keepdims=True)
    e /= xp.where(total == 0, x.dtype.type(1), total)
    return e


def _log_softmax(x, axis):
    """log softmax(x) = x - logsumexp(x), with logsumexp(x) = m + log Σ exp(x - m), m = max x."""
    xp = get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    shifted -= xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))  # in place: one large array fewer
    return shifted


class Softmax(Function):
    """y_i = exp(x_i - max x) / Σ_j exp(x_j - max x) along ``axis``.

    Jacobian dy_i/dx_j = y_i(δ_ij - y_j), so  dL/dx = y ⊙ (dL/dy - Σ_j dL/dy_j · y_j).
    """

    def forward(self, x, axis: int = -1):
        self.axis = normalize_axes(axis, x.ndim)  # a tuple: () for a 0-d x, whose softmax is 1
        self.y = _stable_softmax(as_float(x), self.axis)
        return self.y

    def backward(self, grad):
        y = self.y
        dx = grad - (grad * y).sum(axis=self.axis, keepdims=True)  # dL/dy - Σ_j dL/dy_j · y_j
        dx *= y  # in place: saves one array of the input's size
        return dx


class LogSoftmax(Function):
    """y_i = x_i - log Σ_j exp(x_j)  (computed stably).

    dy_i/dx_j = δ_ij - softmax(x)_j, so  dL/dx = dL/dy - softmax(x) · Σ_i dL/dy_i.
    """

    def forward(self, x, axis: int = -1):
        self.axis = normalize_axes(axis, x.ndim)  # a tuple: () for a 0-d x, whose log-softmax is 0
        self.y = _log_softmax(as_float(x), self.axis)
        return self.y

    def backward(self, grad):
        xp = get_array_module(grad)
        return grad - xp.exp(self.y) * grad.sum(axis=self.axis, keepdims=True)


class LayerNorm(Function):
    """y = (x - μ) / √(σ² + ε) · γ + β, with μ, σ² the mean and (biased) variance over the last
    ``normalized_ndim`` axes (N elements each).

    With x̂ = (x - μ)·r, r = 1/√(σ² + ε) and g = dL/dy · γ, the hand-derived backward is
        dL/dx = r/N · (N·g - Σ g - x̂ · Σ(g ⊙ x̂)),   dL/dγ = Σ_rows dL/dy ⊙ x̂,   dL/dβ = Σ_rows dL/dy,
    where Σ without subscript sums over the normalised axes of one row. (The two subtracted terms are the
    paths through μ and through σ².)
    """

    def forward(self, x, weight, bias, normalized_ndim: int = 1, eps: float = 1e-5):
        xp = get_array_module(x)
        self.axes = tuple(range(x.ndim - normalized_ndim, x.ndim))
        self.n = x.dtype.type(weight.size)  # elements per normalised row
        mean = x.mean(axis=self.axes, keepdims=True)
        centered = x - mean
        var = (centered * centered).mean(axis=self.axes, keepdims=True)
        self.rstd = 1 / xp.sqrt(var + x.dtype.type(eps))  # (…, 1)
        centered *= self.rstd  # in place: centered becomes x̂
        self.xhat = centered  # (…, N)
        self.weight = weight
        y = self.xhat * weight
        y += bias
        return y

    def backward(self, grad):
        batch_axes = tuple(range(grad.ndim - self.weight.ndim))
        dweight = (grad * self.xhat).sum(axis=batch_axes) if self.needs_grad[1] else None
        dbias = grad.sum(axis=batch_axes) if self.needs_grad[2] else None
        dx = None
        if self.needs_grad[0]:
            g = grad * self.weight
            # the formula above, term by term, updating one array in place (4 temporaries of x's size, not 7)
            dx = g * self.n  # N·g
            dx -= g.sum(axis=self.axes, keepdims=True)  # - Σ g
            dx -= self.xhat * (g * self.xhat).sum(axis=self.axes, keepdims=True)  # - x̂ · Σ(g ⊙ x̂)
            dx *= self.rstd / self.n  # · r/N
        return dx, dweight, dbias


class RMSNorm(Function):
    """y = x / RMS(x) · γ,  RMS(x) = √(mean(x²) + ε) over the last ``normalized_ndim`` axes (N elements):
    LayerNorm without the centring and without β (Zhang & Sennrich, 2019; Llama's norm).

    With r = 1/RMS(x), x̂ = x·r and g = dL/dy · γ: since y_i = γ_i x_i r and ∂r/∂x_j = -r³ x_j / N,
        dL/dx_j = g_j r + Σ_i g_i x_i · (-r³ x_j / N) = r · (g_j - x̂_j · mean(g ⊙ x̂)),
        dL/dγ = Σ_rows dL/dy ⊙ x̂
    (one subtracted term, the path through r; LayerNorm has a second one, through the mean).
    """

    def forward(self, x, weight, normalized_ndim: int = 1, eps: float = 1e-6):
        xp = get_array_module(x)
        self.axes = tuple(range(x.ndim - normalized_ndim, x.ndim))
        self.rstd = 1 / xp.sqrt((x * x).mean(axis=self.axes, keepdims=True) + x.dtype.type(eps))  # (…, 1)
        self.xhat = x * self.rstd  # (…, N)
        self.weight = weight
        return self.xhat * weight

    def backward(self, grad):
        batch_axes = tuple(range(grad.ndim - self.weight.ndim))
        dweight = (grad * self.xhat).sum(axis=batch_axes) if self.needs_grad[1] else None
        dx = None
        if self.needs_grad[0]:
            g = grad * self.weight
            dx = g - self.xhat * (g * self.xhat).mean(axis=self.axes, keepdims=True)  # g - x̂ · mean(g ⊙ x̂)
            dx *= self.rstd  # · r
        return dx, dweight


def _pairs(x, interleaved: bool):
    """The two coordinates (a, b) of every rotated pair of x (…, d), as views: adjacent features
    (x_2i, x_2i+1) when ``interleaved`` (llama.cpp, GGUF, the RoFormer paper), else the two halves
    (x_i, x_i+d/2) (Hugging Face's "rotate_half")."""
    if interleaved:
        return x[..., 0::2], x[..., 1::2]
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]


def _rotate(x, cos, sin, interleaved: bool):
    """Every pair (a, b) of x turned by its angle θ: (a cos θ - b sin θ, a sin θ + b cos θ)."""
    out = get_array_module(x).empty_like(x)
    a, b = _pairs(x, interleaved)
    out_a, out_b = _pairs(out, interleaved)
    out_a[...] = a * cos - b * sin
    out_b[...] = a * sin + b * cos
    return out


class Rotary(Function):
    """Rotary position embedding (Su et al., 2021): the d features of a query or key at position m form d/2
    pairs, and pair i is rotated by the angle θ = m·ω_i (``cos``, ``sin`` hold cos θ, sin θ, shape (…, T, d/2),
    broadcast against x (…, T, d)):

        (a, b) -> (a cos θ - b sin θ,  a sin θ + b cos θ).

    Which features form a pair is the ``interleaved`` choice (see :func:`_pairs`); the two layouts are the
    same map up to a fixed permutation of the features. The map is a rotation R(θ), so its Jacobian is
    R(θ) itself and backward applies the transpose, R(θ)ᵀ = R(-θ): the same formula with sin negated,
        dL/dx = R(-θ) · dL/dy.
    """

    def forward(self, x, cos, sin, interleaved: bool = False):
        if x.shape[-1] % 2 or cos.shape[-1] != x.shape[-1] // 2 or sin.shape != cos.shape:
            raise ValueError(f"rotary: x (…, d) needs an even d and cos, sin of shape (…, d/2); got x "
                             f"{tuple(x.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}")
        self.cos, self.sin, self.interleaved = cos, sin, interleaved
        return _rotate(x, cos, sin, interleaved)

    def backward(self, grad):
        return _rotate(grad, self.cos, -self.sin, self.interleaved)


class Dropout(Function):
    """Training: y = x ⊙ m / (1 - p) with m_i ~ Bernoulli(1 - p), so E[y] = x;  dL/dx = dL/dy ⊙ m / (1 - p).

    (Evaluation mode skips the op entirely: see ``functional.dropout``.)
    """

    def forward(self, x, p: float):
        xp = get_array_module(x)
        keep = backend.uniform(x.shape, x.dtype, backend.device_of(x)) >= p  # see backend.batch_piece
        self.scaled_mask = keep * x.dtype.type(1 / (1 - p)) if p < 1 else xp.zeros_like(x)
        return x * self.scaled_mask

    def backward(self, grad):
        return grad * self.scaled_mask


class CrossEntropy(Function):
    """Cross-entropy between logits (…, C) and integer class targets (…).

    Per position, with log-probabilities ℓ = log_softmax(logits) and smoothing ε:
        loss = -(1 - ε)·ℓ[target] - ε · (1/C) Σ_c ℓ_c
    (the cross-entropy against the target distribution q = (1 - ε)·onehot + ε/C). Positions whose target is
    ``ignore_index`` contribute nothing; ``reduction="mean"`` divides by the number n of the others.

    Gradient: dloss/dlogits = softmax(logits) - q, per counted position (times 1/n for "mean"), 0 at ignored
    positions. When every target is ignored, "mean" is 0/0 = NaN, as in PyTorch, but the gradient is 0 (no
    position counts), also as in PyTorch: a batch of padding alone must not put NaN into the weights.
    """

    def forward(self, logits, target, ignore_index: int, label_smoothing: float = 0.0,
                reduction: str = "mean"):  # ignore_index: no default here, F.cross_entropy passes IGNORE_INDEX
        xp = get_array_module(logits)
        self.valid, safe_target = _class_targets("cross_entropy", target, ignore_index, logits.shape[-1])
        logp = _log_softmax(logits, -1)  # (…, C)
        nll = -xp.take_along_axis(logp, safe_target[..., None], axis=-1)[..., 0]  # (…)
        eps = logits.dtype.type(label_smoothing)
        loss = (1 - eps) * nll - eps * logp.mean(axis=-1) if label_smoothing else nll
        loss = xp.where(self.valid, loss, logits.dtype.type(0))
        self.logp, self.target, self.eps, self.reduction = logp, safe_target, eps, reduction
        result, self.count = _reduce_counted(loss, self.valid, reduction)
        return result

    def backward(self, grad):
        xp = get_array_module(grad)
        num_classes = self.logp.shape[-1]
        # softmax, (…, C); C-contiguous, so that the reshape below is a view even when the logits were a
        # permuted (non-contiguous) tensor and logp inherited their memory order
        dlogits = xp.ascontiguousarray(xp.exp(self.logp))
        if self.eps:
            dlogits -= self.eps / num_classes  # q's share on every class
        rows = dlogits.reshape(-1, num_classes)  # a view: writing to it writes dlogits
        rows[xp.arange(rows.shape[0]), self.target.reshape(-1)] -= 1 - self.eps  # q's extra mass on the target
        if self.reduction == "mean":  # 1/n; with n = 0 every position is masked out below anyway
            grad = grad / xp.maximum(self.count, 1).astype(grad.dtype)
        dlogits *= (self.valid * grad)[..., None]  # in place: dlogits is our own array
        return dlogits, None


class NLLLoss(Function):
    """Negative log-likelihood of log-probabilities ℓ (…, C) at integer class targets (…): loss = -ℓ[target].

    ``cross_entropy(logits, t)`` is ``nll_loss(log_softmax(logits), t)``. Positions whose target is
    ``ignore_index`` contribute nothing; ``reduction="mean"`` divides by the number n of the others (NaN when
    every target is ignored, with a zero gradient, as in :class:`CrossEntropy` and PyTorch).

    Gradient: dloss/dℓ_c = -1 at the target class of each counted position (times 1/n for "mean"), 0 elsewhere.
    """

    def forward(self, logp, target, ignore_index: int = -100, reduction: str = "mean"):
        xp = get_array_module(logp)
        self.valid, self.target = _class_targets("nll_loss", target, ignore_index, logp.shape[-1])
        loss = -xp.take_along_axis(logp, self.target[..., None], axis=-1)[..., 0]  # (…)
        loss = xp.where(self.valid, loss, logp.dtype.type(0))
        self.shape, self.dtype, self.reduction = logp.shape, logp.dtype, reduction
        result, self.count = _reduce_counted(loss, self.valid, reduction)
        return result

    def backward(self, grad):
        xp = get_array_module(grad)
        weight = xp.broadcast_to(self.valid * grad, self.valid.shape)  # dloss/d(-ℓ[target]), (…)
        if self.reduction == "mean":  # 1/n; with n = 0 every weight is already 0
            weight = weight / xp.maximum(self.count, 1).astype(grad.dtype)
        dlogp = xp.zeros(self.shape, dtype=self.dtype)  # (…, C)
        rows = dlogp.reshape(-1, self.shape[-1])  # a view of the fresh array
        rows[xp.arange(rows.shape[0]), self.target.reshape(-1)] = -weight.reshape(-1)
        return dlogp, None


def _reduce_counted(loss, valid, reduction: str):
    """``(result, n)`` for per-position losses (…) that are 0 where ``valid`` is False: the losses themselves
    ("none"), their sum ("sum"), or their mean over the n counted positions ("mean": NaN when n = 0, as in
    PyTorch); n is the count for "mean" (its backward divides by it), None otherwise."""
    if reduction == "none":
        return loss, None
    if reduction == "sum":
        return loss.sum(), None
    count = valid.sum()
    return loss.sum() / count.astype(loss.dtype), count


def _class_targets(op: str, target, ignore_index: int, num_classes: int):
    """``(valid, safe_target)`` for class targets (…): where the target counts (is not ``ignore_index``), and
    the targets with the ignored ones replaced by class 0, so that they index safely. Targets outside
    [0, num_classes) raise an IndexError that shows some of them."""
    xp = get_array_module(target)
    valid = target != ignore_index  # (…)
    safe_target = xp.where(valid, target, 0)
    if bool(((safe_target < 0) | (safe_target >= num_classes)).any()):
        bad = target[valid & ((target < 0) | (target >= num_classes))]
        raise IndexError(f"{op}: target values must lie in [0, {num_classes}) or equal "
                         f"ignore_index={ignore_index}; found {bad[:5].tolist()}")
    return valid, safe_target


class LogSumExp(Function):
    """z = log Σ_axis exp(x), computed as m + log Σ exp(x - m) with m = max x (no overflow);
    dz/dx = exp(x - z) = softmax(x) along the reduced axes.

    A group that is all -inf gives z = -inf and, as :func:`_stable_softmax` defines its softmax, a zero
    gradient (PyTorch gives NaN there).
    """

    def forward(self, x, axis=None, keepdims: bool = False):
        xp = get_array_module(x)
        self.x, self.keepdims = as_float(x), keepdims
        self.axes = normalize_axes(axis, x.ndim)
        m = self.x.max(axis=self.axes, keepdims=True)
        m = xp.where(xp.isinf(m), self.x.dtype.type(0), m)  # an all -inf (or a +inf) group: shift by 0
        z = m + xp.log(xp.exp(self.x - m).sum(axis=self.axes, keepdims=True))  # (reduced axes kept as 1)
        return z if keepdims else z.reshape(tuple(n for i, n in enumerate(x.shape) if i not in self.axes))

    def backward(self, grad):
        grad = expand_reduced(grad, self.x.shape, self.axes, self.keepdims)
        return grad * _stable_softmax(self.x, self.axes)


class Normalize(Function):
    """y = x / max(‖x‖_p, ε) along ``axis``, with ‖x‖_p = (Σ |x_i|^p)^(1/p).

    With d = max(‖x‖_p, ε) and g = dL/dy, since ∂‖x‖_p/∂x_j = sign(x_j)·|x_j|^(p-1) / ‖x‖_p^(p-1):
        dL/dx = (g - [‖x‖_p > ε] · Σ_i(g_i·y_i) · sign(x)·|x|^(p-1) / ‖x‖_p^(p-1)) / d,
    which for p = 2 is (g - y·Σ(g ⊙ y)) / ‖x‖. Where the norm is at most ε the divisor is the constant ε
    and the gradient g/ε (as in PyTorch).
    """

    def forward(self, x, p: float = 2.0, axis: int = -1, eps: float = 1e-12):
        if not 0 < p < float("inf"):
            raise ValueError(f"normalize: p must be a positive finite number, got {p}")
        xp = get_array_module(x)
        x = as_float(x)
        self.x, self.p, self.axis = x, x.dtype.type(p), axis
        self.norm = (xp.abs(x) ** self.p).sum(axis=axis, keepdims=True) ** (1 / self.p)  # (…, 1, …)
        self.large = self.norm > eps  # where the divisor is the norm itself, not ε
        self.divisor = xp.where(self.large, self.norm, x.dtype.type(eps))
        self.y = x / self.divisor
        return self.y

    def backward(self, grad):
        xp = get_array_module(grad)
        norm = xp.where(self.large, self.norm, grad.dtype.type(1))  # 1 where it is not used: no 0⁻¹
        dnorm = xp.sign(self.x) * xp.abs(self.x) ** (self.p - 1) / norm ** (self.p - 1)  # ∂‖x‖/∂x
        through_norm = self.large * (grad * self.y).sum(axis=self.axis, keepdims=True) * dnorm
        return (grad - through_norm) / self.divisor


class Embedding(Function):
    """z[…] = weight[ids[…]]: each id picks one row of the (V, D) table.

    Backward: dL/dweight[v] = Σ over the positions where ids == v of dL/dz (a scatter-add, since one id
    can appear many times: ``backend.add_rows``); ids are integers and get no gradient. The row
    ``padding_idx`` (if given) gets none either, so a padding vector stays where it was initialised.
    """

    def forward(self, weight, ids, padding_idx: int | None = None):
        if ids.dtype.kind not in "iu":
            raise TypeError(f"embedding: ids must be an integer tensor, got dtype {ids.dtype} (shape {tuple(ids.shape)})")
        vocab = weight.shape[0]
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise IndexError(f"embedding: ids must lie in [0, {vocab}) for a table of shape {tuple(weight.shape)}, "
                             f"got values in [{int(ids.min())}, {int(ids.max())}]")
        self.ids, self.weight_shape, self.dtype = ids, weight.shape, weight.dtype
        self.padding_idx = padding_idx
        return weight[ids]  # (…, D)

    def backward(self, grad):
        xp = get_array_module(grad)
        dweight = xp.zeros(self.weight_shape, dtype=self.dtype)
        backend.add_rows(dweight, self.ids.reshape(-1), grad.reshape(-1, self.weight_shape[-1]))
        if self.padding_idx is not None:
            dweight[self.padding_idx] = 0
        return dweight, None
