"""The one backend switch: which array module (``xp``) holds a tensor's data.

A tensor lives on a *device*: ``"cpu"`` means its data is a NumPy array, ``"cuda"`` means a CuPy array.
Every op asks this module for the array module of its inputs (``xp = get_array_module(x)``) and then writes
the same code for both; nothing else in minitx says ``if cupy``.

CuPy is imported lazily, the first time ``"cuda"`` is asked for, so a CPU-only machine never needs it and
gets a clear error only when it asks for a GPU.

Also here: the default floating dtype (float32) and the random number generators that make runs
reproducible (``manual_seed``; ``get_rng_state`` / ``set_rng_state`` for checkpoints; ``uniform`` for
dropout masks, drawn as one process would under data parallelism, ``batch_piece``).
"""

from __future__ import annotations

import contextlib

import numpy as np

DEVICES = ("cpu", "cuda")

_default_dtype = np.dtype(np.float32)
_cupy = None


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide, or tensors on two devices were mixed."""


def cupy():
    """Import CuPy on first use; raise a clear :class:`DeviceError` when it is missing or has no GPU."""
    global _cupy
    if _cupy is None:
        try:
            import cupy as cp  # optional dependency: pip install "minitx[cuda]"
        except ImportError as exc:
            raise DeviceError(
                "device 'cuda' needs CuPy, which is not installed; install it with "
                "`pip install 'minitx[cuda]'` (cupy-cuda12x) on a machine with an NVIDIA GPU"
            ) from exc
        try:
            cp.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CuPy raises its own runtime error type when no driver/GPU is present
            raise DeviceError(f"device 'cuda' was asked for but CuPy sees no usable GPU: {exc}") from exc
        _cupy = cp
    return _cupy


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise DeviceError(f"device must be one of {DEVICES}, got {device!r}")
    return device


def xp_for(device: str):
    """The array module for ``device``: numpy for 'cpu', cupy for 'cuda'."""
    return np if check_device(device) == "cpu" else cupy()


def device_of(array) -> str:
    """'cuda' for CuPy arrays, 'cpu' for everything else (NumPy arrays, numbers, lists)."""
    return "cuda" if type(array).__module__.split(".")[0] == "cupy" else "cpu"


def get_array_module(array):
    """numpy or cupy, whichever owns ``array``."""
    return np if device_of(array) == "cpu" else cupy()


def to_device(array, device: str):
    """Copy ``array`` to ``device`` (no copy when it is already there)."""
    if device_of(array) == check_device(device):
        return array
    return cupy().asarray(array) if device == "cuda" else cupy().asnumpy(array)


def to_numpy(array) -> np.ndarray:
    return to_device(array, "cpu")


# ----------------------------------------------------------------------------------------------- dtypes
def default_dtype() -> np.dtype:
    """The floating dtype new tensors get when none is given (float32 unless changed)."""
    return _default_dtype


def set_default_dtype(dtype) -> None:
    global _default_dtype
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"default dtype must be float32 or float64, got {dtype}")
    _default_dtype = dtype


# ------------------------------------------------------------------------------------------- randomness
_rng: dict[str, object] = {}


def manual_seed(seed: int) -> None:
    """Seed every device's generator, so that initialisation, dropout and sampling repeat exactly."""
    _rng["cpu"] = np.random.default_rng(seed)
    if _cupy is not None:
        _rng["cuda"] = _cupy.random.default_rng(seed)
    _rng["seed"] = seed


def rng(device: str = "cpu"):
    """The generator of ``device`` (a ``numpy.random.Generator`` on the CPU)."""
    if device not in _rng:
        xp = xp_for(device)
        _rng[device] = xp.random.default_rng(_rng.get("seed", 0))
    return _rng[device]


def get_rng_state() -> dict:
    """The CPU generator's state, a JSON-serialisable dict (stored in checkpoints)."""
    return rng("cpu").bit_generator.state


def set_rng_state(state: dict) -> None:
    rng("cpu").bit_generator.state = state


# Data parallelism (minitx.distributed): during a training step this process holds piece `rank` of `ranks`
# equal, consecutive pieces of every batch-major array (batch axis first, in C order).
_batch_piece = (0, 1)


@contextlib.contextmanager
def batch_piece(rank: int, ranks: int):
    """Within the block, :func:`uniform` draws as one process would for the whole (``ranks`` times larger)
    batch and keeps piece ``rank``: dropout masks then do not depend on how many processes share a batch."""
    global _batch_piece
    previous, _batch_piece = _batch_piece, (rank, ranks)
    try:
        yield
    finally:
        _batch_piece = previous


def uniform(shape: tuple, dtype, device: str = "cpu"):
    """Numbers uniform in [0, 1) for a batch-major array of ``shape`` (dropout masks), from ``device``'s
    generator. Inside :func:`batch_piece` (rank r of N) the generator draws N·size numbers, the whole global
    array in C order, and the result is piece r of them."""
    rank, ranks = _batch_piece
    if ranks == 1:
        return rng(device).random(shape, dtype=dtype)
    size = int(np.prod(shape))
    return rng(device).random(ranks * size, dtype=dtype)[rank * size:(rank + 1) * size].reshape(shape)


manual_seed(0)


# -------------------------------------------------------------------------------------- special functions
def erf(x):
    """The error function, elementwise, on either device (SciPy's on the CPU, CuPy's on the GPU)."""
    if device_of(x) == "cuda":
        from cupyx.scipy.special import erf as cupy_erf

        return cupy_erf(x)
    from scipy.special import erf as scipy_erf

    return scipy_erf(x)


def scatter_add(target, index, values) -> None:
    """``target[index] += values`` where repeated indices add up (NumPy's ``add.at``; CuPy's scatter_add)."""
    if device_of(target) == "cuda":
        import cupyx

        cupyx.scatter_add(target, index, values)
    else:
        np.add.at(target, index, values)


def add_rows(target, rows, values) -> None:
    """``target[rows[i]] += values[i]`` for a 1-D integer ``rows`` (N,) and ``values`` (N, D), repeated rows
    adding up: an embedding table's gradient. The same as ``scatter_add(target, rows, values)``; on the CPU one
    compiled loop over the rows (``kernels.cpu.embedding``, float32 and float64) instead of ``np.add.at``'s
    element-by-element one."""
    if device_of(target) == "cuda" or target.dtype not in (np.float32, np.float64) or values.dtype != target.dtype:
        scatter_add(target, rows, values)
        return
    from kernels.cpu.embedding import add_rows as add_rows_kernel  # Numba, compiled on first use

    add_rows_kernel(target, rows, values)
