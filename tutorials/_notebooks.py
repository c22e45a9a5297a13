"""Write every chapter as an executed Jupyter notebook, outputs and figures included.

    python tutorials/_notebooks.py [--out tutorial_notebooks] [--quick] [--timeout S] [CHAPTER ...]

Each ``tutorials/NN_topic.py`` (jupytext "percent" cells) becomes ``<out>/NN_topic.ipynb``, run top to
bottom by a Jupyter kernel (nbclient) in the ``tutorials/`` folder, so ``import _common`` works and the
figures appear inline; the PNG files go to ``<out>/figures/<chapter>/``. ``CHAPTER`` selects chapters by
number or name prefix (``04``, ``10_gpt``). ``--quick`` runs them in quick mode. Needs the ``notebooks``
extra: ``pip install -e ".[notebooks]"`` (jupytext, nbclient, ipykernel).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

TUTORIALS = Path(__file__).resolve().parent


def chapters(selected: list[str]) -> list[Path]:
    paths = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
    if selected:
        paths = [p for p in paths if any(p.stem.startswith(s) for s in selected)]
    return paths


def build(path: Path, out: Path, quick: bool, timeout: int) -> Path:
    """Convert ``path`` to a notebook, execute it, and write ``<out>/<stem>.ipynb``."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    env = {"MINITX_TUTORIAL_OUT": str(out / "figures"), "MINITX_QUICK": "1" if quick else "0"}
    os.environ.update(env)  # the kernel inherits this process's environment
    os.environ.pop("MPLBACKEND", None)  # a forced backend (Agg) would keep the figures out of the notebook
    root = str(TUTORIALS.parent)
    os.environ["PYTHONPATH"] = root + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(TUTORIALS)}}).execute()
    target = out / f"{path.stem}.ipynb"
    nbformat.write(notebook, target)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the tutorials as executed notebooks.")
    parser.add_argument("chapters", nargs="*", help="chapter numbers or name prefixes (default: all)")
    parser.add_argument("--out", default="tutorial_notebooks", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="run the chapters in quick mode")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        import jupytext  # noqa: F401
        import nbclient  # noqa: F401
        import ipykernel  # noqa: F401
    except ImportError as e:
        print(f"error: {e.name} is missing; install the notebooks extra: pip install -e \".[notebooks]\"", file=sys.stderr)
        return 1
    paths = chapters(args.chapters)
    if not paths:
        print(f"error: no chapter matches {args.chapters}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        start = time.perf_counter()
        try:
            target = build(path, out, args.quick, args.timeout)
        except Exception as e:  # a failing cell: say which chapter, keep going with the others
            print(f"{path.name}: FAILED: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
            continue
        print(f"{path.name} -> {target} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
