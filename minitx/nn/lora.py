"""LoRA, low-rank adaptation (Hu et al., 2021): fine-tune a large model by training a small correction
beside each chosen weight matrix, the matrix itself frozen.

A frozen Linear W (out, in) gets two small trainable matrices A (r, in) and B (out, r), r ≪ min(in, out):

    y = x Wᵀ + b + (α/r) · Dropout(x) Aᵀ Bᵀ          x (…, in) -> y (…, out)

so the layer acts as if its weight were W + (α/r)·BA, a change of rank at most r, while only r·(in + out)
numbers train instead of out·in (for SmolLM2's 576×576 q_proj and r = 8: 9,216 instead of 331,776).
A starts like a Linear weight, U(-1/√in, 1/√in), and B at zero, so BA = 0 and the adapted model starts as
exactly the pre-trained one; α/r keeps the size of the update independent of r (α is in the units of r).

After training the correction can be folded in, W ← W + (α/r)·BA (:func:`merge_lora`): the model is then as
fast as the original. :func:`unmerge_lora` subtracts it again (up to float rounding).

Saving: only what fine-tuning changed is worth keeping (a few hundred kB instead of the whole model):
:func:`lora_state_dict` gives it, ``minitx.io.save_state_dict`` writes it atomically, and
:func:`load_lora_state_dict` puts it back into a model given the same adapters::

    names = apply_lora(model, targets=("q_proj", "v_proj"), rank=8, alpha=16)
    ... train the parameters that require a gradient ...
    minitx.io.save_state_dict(lora_state_dict(model), "adapters.safetensors")
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict

from .. import backend
from .. import functional as F
from ..tensor import Tensor
from . import init
from .layers import Linear
from .module import Module, Parameter


def _check_settings(where: str, rank, alpha, dropout) -> None:
    if not isinstance(rank, numbers.Integral) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"{where}: rank must be an integer >= 1, got {rank!r}")
    if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not alpha > 0:
        raise ValueError(f"{where}: alpha must be a number > 0, got {alpha!r}")
    if not isinstance(dropout, numbers.Real) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"{where}: dropout must be in [0, 1), got {dropout!r}")


class LoRALinear(Linear):
    """A Linear with a low-rank adapter: y = x Wᵀ + b + (α/r) · Dropout(x) Aᵀ Bᵀ (see the module docstring).

    Built from an existing ``base`` Linear, whose ``weight`` and ``bias`` Parameters it takes over (the same
    objects, not copies, under the same names) and freezes (``requires_grad=False``); it adds ``lora_A``
    (rank, in) ~ U(-1/√in, 1/√in) and ``lora_B`` (out, rank) = 0, in the base weight's dtype and device.
    ``dropout`` acts on the adapter's input only, in training mode. While :attr:`merged`, the weight holds
    W + (α/r)·BA and the adapter branch is skipped.
    """

    def __init__(self, base: Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        if not isinstance(base, Linear) or isinstance(base, LoRALinear):
            raise TypeError(f"LoRALinear: base must be a Linear without an adapter, got {type(base).__name__}")
        _check_settings("LoRALinear", rank, alpha, dropout)
        Module.__init__(self)  # not Linear.__init__: the weights are base's, not new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        for param in (self.weight, self.bias):
            if param is not None:
                param.requires_grad = False
        self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
        self.scaling = self.alpha / self.rank  # α/r
        xp, dtype = backend.get_array_module(self.weight.data), self.weight.dtype
        self.lora_A = Parameter(xp.empty((self.rank, self.in_features), dtype=dtype))  # (r, in)
        self.lora_B = Parameter(xp.zeros((self.out_features, self.rank), dtype=dtype))  # (out, r)
        bound = 1 / math.sqrt(self.in_features)  # PEFT's kaiming_uniform_(a=√5) is this same bound
        init.uniform_(self.lora_A, -bound, bound)
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)  # (…, out)
        if self.merged:
            return y
        h = F.linear(F.dropout(x, self.dropout, self.training), self.lora_A) * self.scaling  # (…, r): thin side
        return y + F.linear(h, self.lora_B)  # (…, out)

    def delta_weight(self):
        """(α/r)·BA, the adapter as a change of the weight: an (out, in) array (no graph)."""
        return (self.lora_B.data @ self.lora_A.data) * self.weight.dtype.type(self.scaling)

    def merge(self) -> None:
        """W ← W + (α/r)·BA, in place; the adapter branch is then skipped (a no-op when already merged)."""
        if not self.merged:
            self.weight.data += self.delta_weight()
            self.merged = True

    def unmerge(self) -> None:
        """W ← W - (α/r)·BA: the base weight back, up to float rounding (a no-op when not merged)."""
        if self.merged:
            self.weight.data -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}, dropout={self.dropout:g}"
                f"{', merged' if self.merged else ''}")


def _matches(name: str, targets) -> bool:
    """True when the dotted ``name`` ends with one of ``targets`` at a dot boundary ("q_proj" matches
    "blocks.0.attn.q_proj"; "attn.q_proj" too; "proj" does not)."""
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(model: Module, targets=("q_proj", "v_proj"), rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0) -> list[str]:
    """Freeze every parameter of ``model`` and give each Linear whose dotted name ends with one of ``targets``
    a :class:`LoRALinear` adapter, in place; return the adapted layers' names.

    Afterwards only the adapters' A and B require a gradient; unfreeze anything else that should train (a new
    classification head, say) with ``requires_grad_(True)``. Raises ValueError naming the Linear layers there
    are when no target matches, and when a matching layer already has an adapter, before changing anything.
    """
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    found = [(parent, child_name, f"{prefix}.{child_name}" if prefix else child_name, child)
             for prefix, parent in model.named_modules() for child_name, child in parent.named_children()
             if isinstance(child, Linear)]
    chosen = [entry for entry in found if _matches(entry[2], targets)]
    if not chosen:
        linear_names = sorted({name for _, _, name, _ in found})
        raise ValueError(f"apply_lora: no Linear layer's name ends with one of targets {targets}; the model's "
                         f"Linear layers are {linear_names[:8]}{' …' if len(linear_names) > 8 else ''}")
    adapted = [name for _, _, name, child in chosen if isinstance(child, LoRALinear)]
    if adapted:
        raise ValueError(f"apply_lora: {adapted} already have LoRA adapters")
    _check_settings("apply_lora", rank, alpha, dropout)
    model.requires_grad_(False)
    wrapped: dict[int, LoRALinear] = {}  # a Linear shared by two parents gets one adapter
    for parent, child_name, _, child in chosen:
        if id(child) not in wrapped:
            wrapped[id(child)] = LoRALinear(child, rank, alpha, dropout)
        setattr(parent, child_name, wrapped[id(child)])
    return [name for _, _, name, _ in chosen]


def lora_layers(model: Module) -> list[tuple[str, LoRALinear]]:
    """(dotted name, layer) of every :class:`LoRALinear` in ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def merge_lora(model: Module) -> None:
    """Fold every adapter into its base weight (:meth:`LoRALinear.merge`)."""
    for _, layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model: Module) -> None:
    """Take every merged adapter out of its base weight again (:meth:`LoRALinear.unmerge`)."""
    for _, layer in lora_layers(model):
        layer.unmerge()


def lora_state_dict(model: Module) -> "OrderedDict":
    """What fine-tuning changed: every adapter's ``lora_A`` and ``lora_B`` and every other parameter that
    requires a gradient (e.g. a new head), as dotted name -> NumPy copy (``Module.state_dict``'s names)."""
    names = {name for name, p in model.named_parameters() if p.requires_grad or name.rsplit(".", 1)[-1]
             in ("lora_A", "lora_B")}
    if not names:
        raise ValueError("lora_state_dict: the model has no adapters and no trainable parameters")
    return OrderedDict((k, v) for k, v in model.state_dict().items() if k in names)


def load_lora_state_dict(model: Module, state) -> None:
    """Copy a :func:`lora_state_dict` (name -> array) into ``model``, which must have the same adapters and
    trainable parameters; raises ValueError naming any missing or unexpected key or wrong shape, before
    changing anything. Merged adapters are unmerged first and merged again after, so the weights stay right."""
    expected = set(lora_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"load_lora_state_dict: missing keys {missing}, unexpected keys {unexpected} (apply the "
                         f"same adapters and unfreeze the same parameters before loading)")
    model.check_state_dict(state, strict=False)  # shapes
    merged = [layer for _, layer in lora_layers(model) if layer.merged]
    for layer in merged:
        layer.unmerge()
    model.load_state_dict(state, strict=False)
    for layer in merged:
        layer.merge()
