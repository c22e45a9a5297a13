"""Numba CPU multi-tensor Adam / AdamW: one compiled call updates every parameter of a group.

For each parameter θ with gradient g (t = the step, counted from 1; formulas in minitx.optim.adam):

    θ ← θ (1 - lr λ)                          (AdamW, decoupled decay)   or   g ← g + λθ   (Adam, coupled)
    m ← β₁ m + (1 - β₁) g,   v ← β₂ v + (1 - β₂) g²
    θ ← θ - (lr / (1 - β₁ᵗ)) m / (√v / √(1 - β₂ᵗ) + ε)

The per-parameter NumPy version makes about ten passes over each parameter's four arrays, each a separate
call; here each element is read and written once, for all parameters in one call, and the arithmetic is the
same, in the same order and precision, so the results are bitwise the NumPy version's (no fastmath: a fused
multiply-add would round differently). Arrays are passed flattened (views) in Numba typed lists.
"""
import numba
import numpy as np
from numba.typed import List


@numba.njit(cache=True, error_model="numpy")  # numpy's error model: no zero-division branch, so the loop vectorises
def _adam_lists(params, grads, exp_avgs, exp_avg_sqs, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
                bias_correction2_sqrt, eps, weight_decay, decay_factor, decoupled):
    """One pass over every element of every parameter, on one thread (the pass is bound by memory
    bandwidth, which a second thread hardly adds to)."""
    for i in range(len(params)):
        p, g, m, v = params[i], grads[i], exp_avgs[i], exp_avg_sqs[i]
        for j in range(p.shape[0]):
            gj = g[j]
            if decoupled:
                p[j] = p[j] * decay_factor                         # θ ← θ(1 - lr·λ)
            elif weight_decay != 0:
                gj = gj + weight_decay * p[j]                      # g ← g + λθ
            m[j] = m[j] * beta1 + gj * one_minus_beta1             # m ← β₁m + (1 - β₁)g
            v[j] = v[j] * beta2 + gj * one_minus_beta2 * gj        # v ← β₂v + (1 - β₂)g²
            denom = np.sqrt(v[j]) / bias_correction2_sqrt + eps    # √v̂ + ε
            p[j] = p[j] - m[j] * step_size / denom                 # θ ← θ - lr·m̂/(√v̂ + ε)


def flat_list(arrays):
    """A Numba typed list of the arrays as 1-D views (every array must be C-contiguous, so no copy is made)."""
    return List([a.reshape(-1) for a in arrays])


def adam_step(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps, weight_decay, step, decoupled):
    """Update params, exp_avgs and exp_avg_sqs in place: typed lists of 1-D arrays of one float dtype
    (``flat_list``), all at step ``step`` (>= 1). ``decoupled``: AdamW's decay, else Adam's."""
    f = params[0].dtype.type
    _adam_lists(params, grads, exp_avgs, exp_avg_sqs, f(beta1), f(1 - beta1), f(beta2), f(1 - beta2),
                f(lr / (1 - beta1 ** step)), f(np.sqrt(1 - beta2 ** step)), f(eps), f(weight_decay),
                f(1 - lr * weight_decay), decoupled)
