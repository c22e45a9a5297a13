"""Small helpers shared by the tutorial chapters (not a lesson in itself).

- ``QUICK``: true when the environment variable ``MINITX_QUICK=1`` asks for a shortened run (the tests use
  it; every chapter then finishes in well under a minute on two CPU cores). ``pick(full, quick)`` chooses a
  size accordingly.
- ``output_dir(chapter)``: where a chapter writes its figures: ``$MINITX_TUTORIAL_OUT/<chapter>`` when the
  variable is set, else ``./tutorial_outputs/<chapter>`` under the current working directory.
- ``plt`` (matplotlib: the non-interactive Agg backend in a script or a test, the notebook's own inline
  backend in Jupyter), ``save(fig, chapter, name)`` (writes the PNG, and shows the figure in a notebook)
  and ``heatmap(fig, ax, data, colorbar_label)``.
- ``progress(iterable, desc)``: a tqdm progress bar for long training loops (off in quick mode).
- ``close(name, got, want, atol, rtol)``: compare two arrays and raise ``AssertionError`` with the worst
  element when they differ; the chapters' checks are built from it.
- ``torch_or_none()``: PyTorch if it can be imported (it is an optional, test-only reference), else None.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import sys

import matplotlib


def in_notebook() -> bool:
    """True inside a Jupyter kernel (figures are then shown inline as well as saved)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return bool(shell) and shell.__class__.__name__ == "ZMQInteractiveShell"


if not in_notebook():
    matplotlib.use("Agg")  # a script or a test: draw into files, no window, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

QUICK = os.environ.get("MINITX_QUICK", "0").strip() not in ("", "0", "false", "False")

plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9})


def progress(iterable, desc: str = "", total: int | None = None):
    """``iterable`` wrapped in a tqdm text progress bar (shown under the cell in a notebook, on stderr in a terminal).

    The bar is off in quick mode, where runs are short and their output is read by tests.
    """
    if QUICK:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total)


def pick(full, quick):
    """``quick`` in quick mode, ``full`` otherwise."""
    return quick if QUICK else full


def output_dir(chapter: str) -> Path:
    root = os.environ.get("MINITX_TUTORIAL_OUT")
    path = (Path(root) if root else Path.cwd() / "tutorial_outputs") / chapter
    path.mkdir(parents=True, exist_ok=True)
    return path


def save(fig, chapter: str, name: str) -> Path:
    """Save ``fig`` as ``<output_dir(chapter)>/<name>.png``, close it, and say where it went."""
    path = output_dir(chapter) / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path)
    if in_notebook():  # show it under the cell, then close it so it is not drawn twice
        from IPython.display import display
        display(fig)
    plt.close(fig)
    print(f"[figure] {path}")
    return path


def heatmap(fig, ax, data, colorbar_label: str, **imshow_kwargs):
    """``imshow`` with a labelled colour bar and no grid lines over the cells."""
    imshow_kwargs.setdefault("interpolation", "nearest")
    imshow_kwargs.setdefault("aspect", "auto")
    image = ax.imshow(data, **imshow_kwargs)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.grid(False)
    return image


def as_numpy(x) -> np.ndarray:
    """A NumPy array from a minitx Tensor, a torch tensor, or anything array-like."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and not hasattr(x, "_ctx"):  # a torch tensor
        return x.detach().cpu().numpy()
    if hasattr(x, "numpy") and hasattr(x, "_ctx"):  # a minitx Tensor
        return x.numpy()
    return np.asarray(x)


def close(name: str, got, want, atol: float = 1e-6, rtol: float = 1e-5) -> float:
    """Assert that ``got`` matches ``want`` elementwise (|got - want| <= atol + rtol·|want|).

    Raises ``AssertionError`` naming the check, the worst element and both values; returns the largest
    absolute difference when the check passes.
    """
    got, want = as_numpy(got).astype(np.float64), as_numpy(want).astype(np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"CHECK FAILED {name}: shape {got.shape} but the reference has shape {want.shape}")
    if not np.isfinite(got).all() and not np.array_equal(np.isfinite(got), np.isfinite(want)):
        raise AssertionError(f"CHECK FAILED {name}: the result holds NaN or inf where the reference does not")
    finite = np.isfinite(want)
    if not np.array_equal(got[~finite], want[~finite]):
        raise AssertionError(f"CHECK FAILED {name}: infinite values differ from the reference")
    diff = np.where(finite, np.abs(got - np.where(finite, want, 0)), 0.0)
    excess = diff - (atol + rtol * np.abs(np.where(finite, want, 0)))
    worst = np.unravel_index(np.argmax(excess), excess.shape) if excess.size else ()
    if excess.size and excess[worst] > 0:
        raise AssertionError(f"CHECK FAILED {name}: at index {tuple(int(i) for i in worst)} got {got[worst]:.8g}, "
                             f"expected {want[worst]:.8g} (|diff| {diff[worst]:.3g} > atol {atol} + rtol {rtol}·|ref|)")
    largest = float(diff.max()) if diff.size else 0.0
    print(f"[check] {name}: ok (max |diff| {largest:.2e})")
    return largest


def torch_or_none():
    """PyTorch, or None when it is not installed (the chapters then use their NumPy references only)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_sequence_encoder(model, torch, dtype=None, max_len: int = 1024):
    """The seed's PyTorch SequenceEncoder (batch-first, post-norm, ReLU) holding a copy of ``model``'s weights.

    ``model`` is a minitx ``SequenceEncoder`` without dropout; ``dtype`` is a torch dtype (default: the
    model's own). Unlike the seed, ``forward(ids, src_key_padding_mask=None)`` hands the padding mask
    (True = padding) on to the encoder stack. PyTorch keeps W_q, W_k, W_v stacked in one (3D, D)
    ``in_proj_weight``; minitx keeps three (D, D) matrices. Used by chapter 07 and
    benchmarks/bench_train_step.py.
    """
    from minitx.nn.layers import sinusoidal_table

    nn = torch.nn
    first = model.transformer_stack.layers[0]
    d, heads, ff = model.hidden_size, first.self_attn.num_heads, first.ff.linear1.weight.shape[0]
    vocab, num_layers = model.output_projection.weight.shape[0], len(model.transformer_stack.layers)
    dtype = dtype or getattr(torch, str(model.embedding.weight.dtype))

    class Seed(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab, d)
            self.register_buffer("pe", torch.tensor(sinusoidal_table(max_len, d)))  # (max_len, D)
            layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation="relu", batch_first=True)
            self.transformer_stack = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
            self.output_projection = nn.Linear(d, vocab)

        def forward(self, ids, src_key_padding_mask=None):  # ids (B, T) -> logits (B, T, V)
            x = self.embedding(ids) * math.sqrt(d) + self.pe[: ids.shape[1]]
            return self.output_projection(self.transformer_stack(x, src_key_padding_mask=src_key_padding_mask))

    seed = Seed().to(dtype)
    w = lambda p: torch.tensor(p.numpy(), dtype=dtype)  # noqa: E731
    with torch.no_grad():
        seed.embedding.weight.copy_(w(model.embedding.weight))
        seed.output_projection.weight.copy_(w(model.output_projection.weight))
        seed.output_projection.bias.copy_(w(model.output_projection.bias))
        for ours, theirs in zip(model.transformer_stack.layers, seed.transformer_stack.layers):
            copy_into_torch_layer(theirs, ours.self_attn, ours.ff, (ours.norm1, ours.norm2), w, torch)
    return seed


def copy_into_torch_layer(layer, attn, ff, norms, w, torch) -> None:
    """Copy one minitx layer into a torch ``nn.TransformerEncoderLayer`` (under ``torch.no_grad()``): its
    attention (W_q, W_k, W_v stacked into ``in_proj_weight``, (3D, D)), its feed-forward's linear1 / linear2 and
    its two LayerNorms ``norms`` (into norm1, norm2); ``w`` turns a minitx parameter into a torch tensor."""
    layer.self_attn.in_proj_weight.copy_(torch.cat([w(attn.q_proj.weight), w(attn.k_proj.weight),
                                                    w(attn.v_proj.weight)]))
    layer.self_attn.in_proj_bias.copy_(torch.cat([w(attn.q_proj.bias), w(attn.k_proj.bias), w(attn.v_proj.bias)]))
    layer.self_attn.out_proj.weight.copy_(w(attn.out_proj.weight))
    layer.self_attn.out_proj.bias.copy_(w(attn.out_proj.bias))
    for name in ("linear1", "linear2"):
        getattr(layer, name).weight.copy_(w(getattr(ff, name).weight))
        getattr(layer, name).bias.copy_(w(getattr(ff, name).bias))
    for norm, theirs in zip(norms, (layer.norm1, layer.norm2)):
        theirs.weight.copy_(w(norm.weight))
        theirs.bias.copy_(w(norm.bias))


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False
