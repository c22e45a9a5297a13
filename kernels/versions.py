"""Kernel versions, kept like llm.c's dev/cuda: each kernel family has one registry of its numbered versions.

A family is one kernel module (``kernels/cpu/attention.py``, ``kernels/cuda/softmax.py``, ...). It ends with
its registry, ``VERSIONS``, built by ``registry``::

    VERSIONS = registry(
        Version("v1", "one thread per query row, operands from global memory", None,
                attention_forward=attention_forward_v1, attention_backward=attention_backward_v1),
        Version("v2", "flash-style: K/V tiles in shared memory, online softmax", "v1",
                attention_forward=attention_forward_v2, attention_backward=attention_backward_v2),
    )

Each version gives its functions under the NumPy reference's names (``softmax``; ``attention_forward`` and
``attention_backward``; ``ffn_forward`` and ``ffn_backward``; ``q4_1_linear`` and ``q8_0_linear``), with the reference's parameters first and
only tuning knobs after them, so a ``Version`` can stand wherever the reference module does:
``version.attention_forward(q, k, v)``. ``kernels.compare``, ``kernels.cuda.check``, the benchmarks and the
tests loop over ``families(backend)``, so adding a version is one entry in its family's file (and its code
there); every reader picks it up.
"""
import importlib

FAMILIES = {"softmax": ("softmax",),
            "attention": ("attention_forward", "attention_backward"),
            "ffn": ("ffn_forward", "ffn_backward"),
            "quantized": ("q4_1_linear", "q8_0_linear")}
BACKENDS = ("cpu", "cuda")


class Version:
    """One version of a kernel family: its name, a one-line description, the version it improves on (None for
    the first) and its functions, by the reference's names.

    ``builds`` (CUDA versions): dtype -> [(label, kernel, argument types, threads)], every compiled kernel of
    the version at the largest configuration its host functions accept (the largest block, hence the largest
    shared-memory tiles), with its threads per block there. tests/kernels/test_cuda_ptx.py compiles each for
    a real GPU and checks that it fits a block's shared memory and registers: smaller blocks of the same code
    then fit too.
    """

    def __init__(self, name, about, improves_on, builds=None, **functions):
        self.name, self.about, self.improves_on, self.functions = name, about, improves_on, functions
        self.builds = builds

    def __getattr__(self, name):
        try:
            return self.__dict__["functions"][name]
        except KeyError:
            raise AttributeError(f"kernel version {self.__dict__.get('name')!r} has no function {name!r}") from None

    def __repr__(self):
        return f"Version({self.name!r}: {self.about})"


def registry(*versions):
    """name -> Version, in order. Every version gives the same function names, has a unique name and a one-line
    description, and improves on an earlier version of the same registry (or on none)."""
    table = {}
    for v in versions:
        if v.name in table:
            raise ValueError(f"kernel version {v.name!r} is registered twice")
        if not v.about or "\n" in v.about:
            raise ValueError(f"kernel version {v.name!r} needs a one-line description")
        if v.improves_on is not None and v.improves_on not in table:
            raise ValueError(f"kernel version {v.name!r} improves on {v.improves_on!r}, which is not an earlier "
                             f"version of the same family ({tuple(table)})")
        if versions and set(v.functions) != set(versions[0].functions):
            raise ValueError(f"kernel version {v.name!r} gives {sorted(v.functions)}, "
                             f"the first version gives {sorted(versions[0].functions)}")
        table[v.name] = v
    return table


def families(backend):
    """{family: its registry} for ``backend`` ("cpu" or "cuda"); importing "cuda" needs numba.cuda, not a GPU."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    tables = {family: importlib.import_module(f"kernels.{backend}.{family}").VERSIONS for family in FAMILIES}
    for family, table in tables.items():
        for v in table.values():
            if set(v.functions) != set(FAMILIES[family]):
                raise ValueError(f"kernels.{backend}.{family} version {v.name!r} gives {sorted(v.functions)}; "
                                 f"a {family} version gives {list(FAMILIES[family])}")
    return tables


def all_versions(backend):
    """[(family, Version)] for every version of every family of ``backend``."""
    return [(family, v) for family, table in families(backend).items() for v in table.values()]
