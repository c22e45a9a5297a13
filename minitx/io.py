"""Saving and loading weights and training checkpoints as safetensors files (no pickle: loading a file
can never run code).

A safetensors file is an 8-byte header length, a JSON header (name -> dtype, shape, byte range; plus a
``__metadata__`` dict of strings) and the raw little-endian tensor bytes. Two additions make it safe to
overwrite checkpoints during training:

- atomic writes: the file is written under a temporary name in the same folder, flushed to disk (fsync)
  and renamed over the target (``os.replace``), so a crash leaves either the old file or the new one;
- a SHA-256 of the tensors *and* of every other metadata entry (``minitx.sha256-all``), checked on load, so
  a truncated or corrupted file (a flipped bit in the step, the optimizer's hyper-parameters or ``extra``
  too) raises :class:`CheckpointError` instead of loading garbage. Files without it (downloaded weights)
  are loaded unchecked; files written by minitx before this version carry ``minitx.sha256``, a digest of
  the tensors only: they are still read, their tensors verified and their metadata parsed and validated
  strictly (a damaged header is caught when it no longer parses, not always).

Temporary files are named ``.tmp-<host>-<pid>-<random>.safetensors`` and created with O_EXCL (never through
a link). A write killed half-way leaves one behind; the next save in that folder removes it once it is
stale: its writer process on this host is gone, or it is untouched for an hour (another host's writer, or
an older minitx's ``.tmp-<random>.safetensors``). A concurrent writer's fresh temp file is never touched.
Files get the permissions the umask gives (0644 usually), like any file the user creates.

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
import re
import socket
import stat
import tempfile
import time

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

_CHECKSUM = "minitx.sha256-all"  # tensors + metadata
_LEGACY_CHECKSUM = "minitx.sha256"  # tensors only (files written before the metadata was covered)
_FORMAT = "checkpoint-1"
_STALE_SECONDS = 3600  # a temp file untouched this long belongs to a dead write


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable (truncated, corrupt, not safetensors) or does not fit the model."""


def _digest(tensors: dict, metadata: dict | None = None) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the tensors, in sorted name order, then over the
    metadata entries (JSON of the sorted dict; ``None`` for the legacy tensors-only digest)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        array = tensors[name]
        h.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        h.update(array.tobytes())
    if metadata is not None:
        h.update(json.dumps(metadata, sort_keys=True).encode())
    return h.hexdigest()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: str) -> list[str]:
    """Remove the temp files of killed writes in ``folder`` (naming rules in the module docstring); return them.

    Only regular files matching our names are considered; links are never followed (``lstat``)."""
    ours = re.compile(r"\.tmp-(?:([A-Za-z0-9]+)-(\d+)-)?[A-Za-z0-9_]+\.safetensors$")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    host, now = _host(), time.time()
    for name in names:
        match = ours.match(name)
        if not match:
            continue
        path = os.path.join(folder, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        writer_host, pid = match.group(1), match.group(2)
        if writer_host == host and pid is not None:
            stale = not _pid_alive(int(pid))  # a live pid (ours, or a reused one) keeps its file
        else:
            stale = now - info.st_mtime > _STALE_SECONDS
        if stale:
            try:
                os.remove(path)
                removed.append(name)
            except OSError:
                pass
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_state_dict(state: dict, path, metadata: dict | None = None) -> None:
    """Write ``state`` (name -> NumPy array) to ``path`` atomically; ``metadata`` is a dict of strings."""
    tensors = {name: np.ascontiguousarray(array) for name, array in state.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.pop(_LEGACY_CHECKSUM, None)
    meta[_CHECKSUM] = _digest(tensors, meta)
    payload = safetensors_save(tensors, metadata=meta)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temp_files(folder)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{_host()}-{os.getpid()}-", suffix=".safetensors", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from the user's group
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
        if not isinstance(header, dict):
            raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError("__metadata__ is not an object of strings")
        tensors = safetensors_load(payload)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupt?): {exc}") from None
    if _CHECKSUM in metadata:
        rest = {k: v for k, v in metadata.items() if k != _CHECKSUM}
        if _digest(tensors, rest) != metadata[_CHECKSUM]:
            raise CheckpointError(f"{path}: checksum mismatch, the tensors or the metadata are corrupt")
    elif _LEGACY_CHECKSUM in metadata and _digest(tensors) != metadata[_LEGACY_CHECKSUM]:
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


def load_checkpoint(path, model, optimizer=None, check_extra=None) -> dict:
    """Restore a file written by :func:`save_checkpoint` into ``model`` (and ``optimizer``).

    Everything is read and checked before anything is assigned: a damaged file or one that does not fit
    the model or optimizer (or whose ``extra`` ``check_extra(extra)`` refuses with ValueError) raises
    :class:`CheckpointError` and leaves both unchanged.
    Returns {"step": int, "extra": dict}.
    """
    tensors, metadata = read_state_dict_file(path)
    if metadata.get("minitx.format") != _FORMAT:
        raise CheckpointError(f"{path}: not a minitx checkpoint (metadata minitx.format is "
                              f"{metadata.get('minitx.format')!r}, expected {_FORMAT!r})")
    try:
        step, extra, model_state, optimizer_state = _parse_checkpoint(tensors, metadata, optimizer is not None)
        model.check_state_dict(model_state)
        if optimizer is not None:
            optimizer.check_state_dict(optimizer_state)
        if check_extra is not None:
            check_extra(extra)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model.load_state_dict(model_state)
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state)
    return {"step": step, "extra": extra}


def _parse_checkpoint(tensors: dict, metadata: dict, with_optimizer: bool) -> tuple:
    """(step, extra, model state, optimizer state or None) of a checkpoint; ValueError if anything is off."""
    if not any(k in metadata for k in (_CHECKSUM, _LEGACY_CHECKSUM)):
        raise ValueError("no checksum in the metadata (damaged header?)")
    step_text = metadata.get("minitx.step", "")
    if not step_text.isdigit():
        raise ValueError(f"minitx.step must be a non-negative integer, got {step_text!r}")
    extra = json.loads(metadata.get("minitx.extra", "{}"))
    if not isinstance(extra, dict):
        raise ValueError(f"minitx.extra must be a JSON object, got a {type(extra).__name__}")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if not with_optimizer:
        return int(step_text), extra, model_state, None
    if "minitx.optimizer" not in metadata:
        raise ValueError("holds no optimizer state, but an optimizer was given")
    saved = json.loads(metadata["minitx.optimizer"])
    if not (isinstance(saved, dict) and isinstance(saved.get("scalars"), dict)
            and all(isinstance(v, dict) for v in saved["scalars"].values())):
        raise ValueError("minitx.optimizer must be a JSON object with 'param_groups' and a 'scalars' object")
    state: dict = {int(i): dict(entries) for i, entries in saved["scalars"].items()}
    for name, array in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = array
    return int(step_text), extra, model_state, {"state": state, "param_groups": saved.get("param_groups")}
