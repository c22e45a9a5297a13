"""GGUF files: llama.cpp's single-file format for a model's configuration, tokenizer and (quantised) weights.

A GGUF file holds three things, in this order:

1. a header of *metadata*: typed key/value pairs such as ``llama.block_count = 30`` or
   ``tokenizer.ggml.merges = ["Ġ t", "Ġ a", ...]``;
2. a table of *tensors*: name, shape, storage type and where the bytes lie;
3. the tensors' bytes.

The container (1 and 2) is parsed with the ``gguf`` package, which is plumbing. What the bytes *mean* is the
lesson, and is written here: a tensor is stored either as plain floats (F32, F16) or *quantised* in blocks of
32 consecutive weights along a row, each block keeping its own scale so that a few bits per weight suffice.

- **Q8_0** (34 bytes per block): an f16 scale ``d`` and 32 signed bytes ``q``; ``w = d * q``.
- **Q4_1** (20 bytes per block, 5 bits per weight): an f16 scale ``d``, an f16 minimum ``m`` and 32 unsigned
  4-bit numbers ``q`` in 16 bytes; ``w = d * q + m``. Byte ``j`` holds weight ``j`` in its low nibble and
  weight ``j + 16`` in its high nibble.

GGUF lists a tensor's dimensions fastest-varying first (``[in, out]`` for a linear layer); :class:`GGUFTensor`
gives them in NumPy's order, so a linear layer's weight has the shape ``(out, in)``, as in Hugging Face.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BLOCK_SIZE = 32  # weights per block in every quantised type here

# GGML's numbers for the storage types this module reads.
F32, F16, Q4_1, Q8_0 = 0, 1, 3, 8
TYPE_NAMES = {F32: "F32", F16: "F16", Q4_1: "Q4_1", Q8_0: "Q8_0"}
BYTES_PER_BLOCK = {Q4_1: 20, Q8_0: 34}


class GGUFError(ValueError):
    """A GGUF file that cannot be read, or a tensor in a storage type this module does not de-quantise."""


def _half(raw: np.ndarray) -> np.ndarray:
    """The little-endian f16 numbers in the byte columns ``raw`` (..., 2k), as float32 (..., k)."""
    return np.ascontiguousarray(raw).view("<f2").astype(np.float32)


def q4_1_fields(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 blocks (..., 20) uint8 -> scale d (...,) and minimum m (...,) float32, packed q (..., 16) uint8."""
    d = _half(blocks[..., 0:2])[..., 0]
    m = _half(blocks[..., 2:4])[..., 0]
    return d, m, blocks[..., 4:]


def dequantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    """Q4_1 blocks (n, 20) uint8 -> weights (n, 32) float32: ``w = d * q + m``."""
    d, m, packed = q4_1_fields(blocks)                           # (n,), (n,), (n, 16) two 4-bit numbers a byte
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=1)     # (n, 32) weights 0-15 low, 16-31 high
    return d[:, None] * q.astype(np.float32) + m[:, None]


def q8_0_fields(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 blocks (..., 34) uint8 -> scale d (...,) float32, numbers q (..., 32) int8."""
    return _half(blocks[..., 0:2])[..., 0], blocks[..., 2:].view(np.int8)


def dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    """Q8_0 blocks (n, 34) uint8 -> weights (n, 32) float32: ``w = d * q``."""
    d, q = q8_0_fields(blocks)                                   # (n,) scale, (n, 32) signed
    return d[:, None] * q.astype(np.float32)


_DEQUANTIZERS = {Q4_1: dequantize_q4_1, Q8_0: dequantize_q8_0}


@dataclass
class GGUFTensor:
    """One tensor of a GGUF file: its raw bytes and how to read them.

    Attributes:
        name: e.g. ``"blk.0.attn_q.weight"``.
        ggml_type: the storage type (:data:`F32`, :data:`F16`, :data:`Q4_1`, :data:`Q8_0`, or another GGML
            number, which :meth:`dequantize` refuses).
        shape: NumPy order, last axis fastest (a linear layer's weight is ``(out, in)``).
        data: the stored bytes, ``uint8`` of shape ``(rows, bytes per row)`` (memory-mapped from the file).
    """

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    data: np.ndarray

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.ggml_type, f"GGML type {self.ggml_type}")

    def q4_1_blocks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A Q4_1 matrix (O, in) kept quantised: scale and minimum (O, in/32) float32, packed (O, in/32, 16)."""
        if self.ggml_type != Q4_1 or len(self.shape) != 2 or self.shape[1] % BLOCK_SIZE:
            raise GGUFError(f"tensor {self.name!r} ({self.type_name}, shape {self.shape}) is not a Q4_1 matrix")
        rows, n_blocks = self.shape[0], self.shape[1] // BLOCK_SIZE
        return q4_1_fields(self.data.reshape(rows, n_blocks, BYTES_PER_BLOCK[Q4_1]))

    def q8_0_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """A Q8_0 matrix (O, in) kept quantised: scale (O, in/32) float32, numbers (O, in/32, 32) int8."""
        if self.ggml_type != Q8_0 or len(self.shape) != 2 or self.shape[1] % BLOCK_SIZE:
            raise GGUFError(f"tensor {self.name!r} ({self.type_name}, shape {self.shape}) is not a Q8_0 matrix")
        rows, n_blocks = self.shape[0], self.shape[1] // BLOCK_SIZE
        return q8_0_fields(self.data.reshape(rows, n_blocks, BYTES_PER_BLOCK[Q8_0]))

    def dequantize(self) -> np.ndarray:
        """The tensor as float32, of shape :attr:`shape`."""
        raw = self.data.reshape(-1)
        if self.ggml_type == F32:
            values = raw.view("<f4").astype(np.float32)
        elif self.ggml_type == F16:
            values = raw.view("<f2").astype(np.float32)
        elif self.ggml_type in _DEQUANTIZERS:
            size = BYTES_PER_BLOCK[self.ggml_type]
            if raw.size % size:
                raise GGUFError(f"tensor {self.name!r}: {raw.size} bytes is not a whole number of "
                                f"{self.type_name} blocks of {size} bytes")
            values = _DEQUANTIZERS[self.ggml_type](raw.reshape(-1, size)).reshape(-1)
        else:
            raise GGUFError(f"tensor {self.name!r} is stored as {self.type_name}; minitx de-quantises only "
                            f"{', '.join(TYPE_NAMES.values())}")
        expected = int(np.prod(self.shape))
        if values.size != expected:
            raise GGUFError(f"tensor {self.name!r}: shape {self.shape} needs {expected} values, "
                            f"its {raw.size} bytes of {self.type_name} hold {values.size}")
        return values.reshape(self.shape)


@dataclass
class GGUFFile:
    """A parsed GGUF file: ``metadata`` (key -> int, float, bool, str or list) and ``tensors`` (name -> tensor)."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]

    def tensor(self, name: str) -> GGUFTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path} has no tensor {name!r}") from None

    def require(self, key: str) -> Any:
        """The metadata value of ``key``; a :class:`GGUFError` naming the file if it is missing."""
        if key not in self.metadata:
            raise GGUFError(f"{self.path} has no metadata key {key!r}")
        return self.metadata[key]


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse the GGUF file at ``path`` (tensor bytes stay memory-mapped until de-quantised).

    Raises:
        FileNotFoundError: no file at ``path``.
        GGUFError: the file is not a GGUF file, or is truncated or damaged.
    """
    from gguf import GGUFReader  # the container's parser (plumbing)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    try:
        reader = GGUFReader(path)
        metadata = {key: field.contents() for key, field in reader.fields.items()}
        tensors = {}
        for t in reader.tensors:
            shape = tuple(int(n) for n in reversed(t.shape))
            raw = np.asarray(t.data)
            tensors[t.name] = GGUFTensor(t.name, int(t.tensor_type), shape,
                                         raw.view(np.uint8).reshape(raw.shape[0] if raw.ndim > 1 else 1, -1))
    except GGUFError:
        raise
    except (ValueError, IndexError, KeyError, OSError, TypeError) as e:
        raise GGUFError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from None
    return GGUFFile(path, metadata, tensors)

