"""Saving and loading weights and training checkpoints as safetensors files (no pickle: loading a file
can never run code).

A safetensors file is an 8-byte header length, a JSON header (name -> dtype, shape, byte range; plus a
``__metadata__`` dict of strings) and the raw little-endian tensor bytes. Two additions make it safe to
overwrite checkpoints during training:

- atomic writes: the file is written under a temporary name in the same folder, flushed to disk (fsync)
  and renamed over the target (``os.replace``), so a crash leaves either the old file or the new one;
- a SHA-256 of the tensor bytes in the metadata (``minitx.sha256``), checked on load, so a truncated or
  corrupted file raises :class:`CheckpointError` instead of loading garbage (files without it, e.g.
  downloaded weights, are loaded unchecked).

Checkpoint format (:func:`save_checkpoint`):
    tensors   "model.<name>"                  every entry of model.state_dict()
              "optimizer.<index>.<key>"       every array of optimizer.state_dict()["state"]
    metadata  "minitx.format" = "checkpoint-1"
              "minitx.step"                   the step, as a decimal string
              "minitx.optimizer"              JSON: {"param_groups": [...], "scalars": {index: {key: number}}}
              "minitx.extra"                  JSON of ``extra`` (RNG state, scheduler, data position…)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

_CHECKSUM = "minitx.sha256"
_FORMAT = "checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable (truncated, corrupt, not safetensors) or does not fit the model."""


def _digest(tensors: dict) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the tensors, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        array = tensors[name]
        h.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def save_state_dict(state: dict, path, metadata: dict | None = None) -> None:
    """Write ``state`` (name -> NumPy array) to ``path`` atomically; ``metadata`` is a dict of strings."""
    tensors = {name: np.ascontiguousarray(array) for name, array in state.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[_CHECKSUM] = _digest(tensors)
    payload = safetensors_save(tensors, metadata=meta)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_state_dict_file(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file, verified against its checksum when it has one."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        payload = f.read()
    try:
        if len(payload) < 8:
            raise ValueError(f"{len(payload)} bytes is too short for a safetensors header")
        header_len = int.from_bytes(payload[:8], "little")
        header = json.loads(payload[8:8 + header_len])
        metadata = header.get("__metadata__") or {}
        tensors = safetensors_load(payload)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupt?): {exc}") from None
    if _CHECKSUM in metadata and _digest(tensors) != metadata[_CHECKSUM]:
        raise CheckpointError(f"{path}: checksum mismatch, the tensor data is corrupt")
    return tensors, metadata


def load_state_dict_file(path) -> dict:
    """The tensors (name -> NumPy array) of a safetensors file; raises :class:`CheckpointError` if damaged."""
    return read_state_dict_file(path)[0]


# ------------------------------------------------------------------------------------ training checkpoints
def save_checkpoint(path, model, optimizer=None, step: int = 0, extra: dict | None = None) -> None:
    """Write model weights, optimizer state, the step and JSON-able ``extra`` to one file (format above)."""
    tensors = {f"model.{name}": array for name, array in model.state_dict().items()}
    metadata = {"minitx.format": _FORMAT, "minitx.step": str(int(step)), "minitx.extra": json.dumps(extra or {})}
    if optimizer is not None:
        saved = optimizer.state_dict()
        scalars = {}
        for index, entries in saved["state"].items():
            for key, value in entries.items():
                if isinstance(value, np.ndarray):
                    tensors[f"optimizer.{index}.{key}"] = value
                else:
                    scalars.setdefault(str(index), {})[key] = value
        metadata["minitx.optimizer"] = json.dumps({"param_groups": saved["param_groups"], "scalars": scalars})
    save_state_dict(tensors, path, metadata)


def load_checkpoint(path, model, optimizer=None) -> dict:
    """Restore a file written by :func:`save_checkpoint` into ``model`` (and ``optimizer``).

    Everything is read and checked before anything is assigned: a damaged file or one that does not fit
    the model or optimizer raises :class:`CheckpointError` and leaves both unchanged.
    Returns {"step": int, "extra": dict}.
    """
    tensors, metadata = read_state_dict_file(path)
    if metadata.get("minitx.format") != _FORMAT:
        raise CheckpointError(f"{path}: not a minitx checkpoint (metadata minitx.format is "
                              f"{metadata.get('minitx.format')!r}, expected {_FORMAT!r})")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state = None
    if optimizer is not None:
        if "minitx.optimizer" not in metadata:
            raise CheckpointError(f"{path}: holds no optimizer state, but an optimizer was given")
        saved = json.loads(metadata["minitx.optimizer"])
        state: dict = {int(i): dict(entries) for i, entries in saved["scalars"].items()}
        for name, array in tensors.items():
            if name.startswith("optimizer."):
                _, index, key = name.split(".", 2)
                state.setdefault(int(index), {})[key] = array
        optimizer_state = {"state": state, "param_groups": saved["param_groups"]}
    try:
        model.check_state_dict(model_state)
        if optimizer is not None:
            optimizer.check_state_dict(optimizer_state)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model.load_state_dict(model_state)
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state)
    return {"step": int(metadata["minitx.step"]), "extra": json.loads(metadata["minitx.extra"])}
