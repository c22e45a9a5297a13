"""Small helpers shared by the tutorial chapters (not a lesson in itself).

- ``QUICK``: true when the environment variable ``MINITX_QUICK=1`` asks for a shortened run (the tests use
  it; every chapter then finishes in well under a minute on two CPU cores). ``pick(full, quick)`` chooses a
  size accordingly.
- ``output_dir(chapter)``: where a chapter writes its figures: ``$MINITX_TUTORIAL_OUT/<chapter>`` when the
  variable is set, else ``./tutorial_outputs/<chapter>`` under the current working directory.
- ``plt`` (matplotlib with the non-interactive Agg backend), ``save(fig, chapter, name)`` and
  ``heatmap(fig, ax, data, colorbar_label)``.
- ``close(name, got, want, atol, rtol)``: compare two arrays and raise ``AssertionError`` with the worst
  element when they differ; the chapters' checks are built from it.
- ``torch_or_none()``: PyTorch if it can be imported (it is an optional, test-only reference), else None.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw into files; no window, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

QUICK = os.environ.get("MINITX_QUICK", "0").strip() not in ("", "0", "false", "False")

plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9})


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


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False
