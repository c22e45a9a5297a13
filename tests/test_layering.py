"""Imports run one way: a scan of every ``import`` in minitx/ and kernels/ (with ``ast``, nothing is imported).

The layers, bottom to top (README, "Layout"; a module may import its own group and the groups below it):

    kernels                                       array level: NumPy, Numba CPU and CUDA; knows nothing of minitx
    backend                                       where arrays live (NumPy or CuPy), dtype, RNG
    tensor, ops                                   autograd; tensor <-> ops is the one allowed circle
    functional, gradcheck                         what layers call; checking gradients
    minitx (the package's __init__)               what ``import minitx`` gives
    nn, optim, io, gguf                           layers; optimisers (beside nn, not on it); file formats
    models                                        configurations of nn blocks, and sampling
    tokenizers                                    a leaf: imports nothing else of minitx
    data                                          corpora, loaders, collators, fetchers
    distributed                                   ranks, sharded sampling, gradient all-reduce
    hub, train                                    published checkpoints in; the training loop
    embed, pipelines                              the source texts' workflows
    demo
    cli
    __main__                                      ``python -m minitx``

Siblings on one row do not import each other. Lazy imports inside functions count: they are dependencies
too. A module that is not in the table fails the test until it is given a row. The library never imports
PyTorch, transformers, tokenizers or tiktoken (test-time oracles); kernels/compare.py may use torch as an
optional reference.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = [  # bottom to top; one row per rank
    ["kernels"],
    ["minitx.backend"],
    ["minitx.tensor", "minitx.ops"],
    ["minitx.functional", "minitx.gradcheck"],
    ["minitx"],
    ["minitx.nn", "minitx.optim", "minitx.io", "minitx.gguf"],
    ["minitx.models"],
    ["minitx.tokenizers"],
    ["minitx.data"],
    ["minitx.distributed"],
    ["minitx.hub", "minitx.train"],
    ["minitx.embed", "minitx.pipelines"],
    ["minitx.demo"],
    ["minitx.cli"],
    ["minitx.__main__"],
]
RANK = {group: rank for rank, row in enumerate(LAYERS) for group in row}
ALLOWED_CIRCLE = {"minitx.tensor", "minitx.ops"}  # tensor builds ops' results, ops subclass tensor's Function
LEAVES = {"minitx.tokenizers"}  # import nothing else of minitx
ORACLES = {"torch", "transformers", "tokenizers", "tiktoken"}  # test-time only
OPTIONAL_REFERENCE = {("kernels.compare", "torch")}  # (module, oracle) allowed: an optional speed reference


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.lru_cache(maxsize=None)
def _read_library() -> tuple:
    return tuple((module_name(p), str(p.relative_to(ROOT)), p.read_text(encoding="utf-8"))
                 for package in ("minitx", "kernels") for p in sorted((ROOT / package).rglob("*.py")))


def library_sources() -> dict[str, tuple[str, str]]:
    """module name -> (path relative to the repository, source) for every .py file of minitx/ and kernels/."""
    return {name: (path, source) for name, path, source in _read_library()}


def group_of(module: str) -> str | None:
    """The table's group of an internal module (the longest matching entry), or None when it has no row."""
    if module == "minitx":
        return "minitx"
    matches = [g for g in RANK if g != "minitx" and (module == g or module.startswith(g + "."))]
    return max(matches, key=len) if matches else None


@functools.lru_cache(maxsize=None)  # each file is parsed once per session, however many tests scan it
def raw_imports(module: str, source: str, is_package: bool) -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    """(line, absolute module name, names taken from it) for every import in ``source``; relative imports are
    made absolute, and ``import a.b`` takes no names."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.append((node.lineno, base, tuple(alias.name for alias in node.names)))
    return tuple(found)


def imports_of(module: str, source: str, is_package: bool, known: frozenset[str]) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``source``: internal names resolved to the module they
    load (``from .. import functional`` -> minitx.functional), external ones to their top-level name."""
    def internal(name: str) -> str:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    found = []
    for line, base, names in raw_imports(module, source, is_package):
        if base.split(".")[0] not in ("minitx", "kernels"):
            found.append((line, base.split(".")[0]))
            continue
        if not names:  # import a.b.c
            found.append((line, internal(base)))
        found += [(line, f"{base}.{n}" if f"{base}.{n}" in known else internal(base)) for n in names]
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def layering_violations(sources: dict[str, tuple[str, str]]) -> list[str]:
    """Every break of the rules in the module docstring, one line each (empty: the layering holds)."""
    known = frozenset(sources)
    problems, graph = [], {m: set() for m in sources}
    for module, (path, source) in sorted(sources.items()):
        group = group_of(module)
        if group is None:
            problems.append(f"{path}: module {module} has no row in tests/test_layering.py's LAYERS: give it one")
            continue
        for line, target in imports_of(module, source, path.endswith("__init__.py"), known):
            where = f"{path}:{line}: {module} imports {target}"
            if target in ORACLES:
                if (module, target) not in OPTIONAL_REFERENCE:
                    problems.append(f"{where}: {target} is a test-time oracle, the library never imports it")
                continue
            if target not in known:
                continue  # the standard library or a dependency (numpy, numba, safetensors, ...)
            graph[module].add(target)
            target_group = group_of(target)
            if target_group is None or target_group == group:
                continue
            if group == "kernels":
                problems.append(f"{where}: kernels/ is array level and never imports minitx")
            elif group in LEAVES:
                problems.append(f"{where}: {group} is a leaf and imports nothing else of minitx")
            elif RANK[target_group] > RANK[group]:
                problems.append(f"{where}: upward import ({group} sits below {target_group})")
            elif RANK[target_group] == RANK[group] and {group, target_group} != ALLOWED_CIRCLE:
                problems.append(f"{where}: sideways import ({group} and {target_group} are siblings)")
    for component in strongly_connected(graph):
        if {group_of(m) for m in component} != ALLOWED_CIRCLE:
            problems.append(f"import cycle among {', '.join(sorted(component))} (only tensor <-> ops is allowed)")
    return problems


def test_imports_point_down_and_the_library_never_imports_the_oracles():
    problems = layering_violations(library_sources())
    assert not problems, "the layering is broken:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("module, source, complaint", [
    ("kernels.cpu", "from minitx.tensor import Tensor", "never imports minitx"),
    ("minitx.nn.layers", "import torch", "test-time oracle"),
    ("minitx.models.bert", "def f():\n    from ..hub import load_bert", "upward import (minitx.models sits below"),
    ("minitx.models.bert", "from ..tokenizers import WordPieceTokenizer", "upward import"),
    ("minitx.tokenizers.bpe", "from ..tensor import Tensor", "is a leaf"),
    ("minitx.optim.sgd", "from ..nn import Module", "sideways import"),
    ("minitx.functional", "from .gradcheck import gradcheck", "sideways import"),
    ("minitx.nn.module", "import minitx.nn.layers", "import cycle"),
    ("minitx.newthing", "import numpy", "has no row"),
])
def test_the_scan_reports_each_kind_of_break(module, source, complaint):
    """Plant one bad import in a copy of the real sources: the scan must name it."""
    sources = library_sources()
    path = sources[module][0] if module in sources else module.replace(".", "/") + ".py"
    old = sources[module][1] if module in sources else ""
    sources[module] = (path, old + "\n" + source + "\n")
    problems = layering_violations(sources)
    assert any(complaint in p for p in problems), problems


def test_the_allowed_exceptions_stay_allowed():
    sources = library_sources()
    assert any(target == "minitx.ops" for _, target in imports_of("minitx.tensor", sources["minitx.tensor"][1],
                                                                  False, frozenset(sources)))  # the one circle exists
    path, source = sources["kernels.compare"]
    assert "torch" in [t for _, t in imports_of("kernels.compare", source, False, frozenset(sources))]


def test_old_import_paths_name_the_new_place():
    """Names that moved up or out keep a clear message: the error says where they live now."""
    import minitx.embed
    import minitx.functional as F
    from minitx.models import BertModel

    with pytest.raises(ImportError, match=r"minitx\.hub\.load_pretrained"):
        from minitx.models.pretrained import load_pretrained  # noqa: F401
    with pytest.raises(ImportError, match=r"minitx\.hub\.load_bert"):
        from minitx.models.pretrained import from_pretrained  # noqa: F401
    with pytest.raises(ImportError, match=r"minitx\.hub\.load_bert"):
        BertModel.from_pretrained("folder")
    with pytest.raises(ImportError, match=r"minitx\.models\.sampling\.top_p_filter"):
        from minitx.models.gpt import top_p_filter  # noqa: F401
    with pytest.raises(ImportError, match=r"minitx\.models\.sampling\.probabilities"):
        from minitx.models.gpt import softmax  # noqa: F401
    assert minitx.embed.mean_pool is F.mean_pool and minitx.embed.normalize is F.normalize
    from minitx.data import IGNORE_INDEX
    from minitx.models import padding_mask_from_attention_mask
    assert IGNORE_INDEX == F.IGNORE_INDEX == -100
    assert padding_mask_from_attention_mask is F.padding_mask_from_attention_mask
