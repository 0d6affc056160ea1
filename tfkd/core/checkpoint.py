"""Checkpoints: written atomically, read with weights_only=True (never unpickling objects)."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tfkd.core import atomic

CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "model.pt"
RAM_FOLDER = Path("/dev/shm")  # Linux's memory-backed file system, where there is one
SCRATCH_PREFIX = "tfkd-ckpt-"


def save_atomic(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save `state` as the whole of `path` (tfkd.core.atomic)."""
    path = Path(path)
    with atomic.replacing(path) as out:
        torch.save(state, out)
    return path


def resolve_file(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a folder holding checkpoint.pt or model.pt."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (CHECKPOINT_FILE, WEIGHTS_FILE):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} or {WEIGHTS_FILE} in folder {path}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (file or folder) with weights_only=True."""
    file = resolve_file(path)
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # it holds Python objects: never unpickled here
        raise ValueError(
            f"{file} is not a weights-only checkpoint: it stores Python objects, and tfkd only "
            "loads tensors (weights_only=True) so that no file can run code; save the weights "
            "alone, e.g. torch.save({'model': model.state_dict()}, PATH), or use a tfkd run's "
            f"{WEIGHTS_FILE}"
        ) from None
    except Exception as exc:  # corrupt or not a tfkd checkpoint
        raise ValueError(
            f"cannot read checkpoint {file}: {exc.__class__.__name__}: {exc}"
        ) from None
    if _is_bare_weights(state):  # a state_dict alone, e.g. torchvision's pretrained files
        return {"model": state, "meta": {}}
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{file} is not a tfkd checkpoint (no 'model' weights)")
    return state


def _is_bare_weights(state: Any) -> bool:
    return (
        isinstance(state, dict)
        and "model" not in state
        and bool(state)
        and all(isinstance(v, torch.Tensor) for v in state.values())
    )


def export_weights(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write only the model weights and metadata (what a teacher needs), atomically."""
    state = load(path)
    return save_atomic({"model": state["model"], "meta": state.get("meta", {})}, out)


def state_bytes(state: Any) -> int:
    """The bytes of the tensors in a (nested) checkpoint state."""
    if isinstance(state, torch.Tensor):
        return state.nelement() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


@contextlib.contextmanager
def scratch_folder(needed_bytes: int) -> Iterator[Path]:
    """A fresh folder for one epoch's checkpoint on its way to its owner, removed afterwards.

    In memory (/dev/shm) when it has room for twice `needed_bytes`: the checkpoint is copied
    to its storage by its owner (Ray), so writing it to a disk first would write it twice. Else
    in the temp folder. Folders left by processes that were killed are removed first.
    """
    parent = RAM_FOLDER if _has_room(RAM_FOLDER, 2 * needed_bytes) else Path(tempfile.gettempdir())
    atomic.remove_dead_process_folders(parent, SCRATCH_PREFIX)
    folder = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _has_room(folder: Path, needed_bytes: int) -> bool:
    try:
        return os.access(folder, os.W_OK) and shutil.disk_usage(folder).free > needed_bytes
    except OSError:
        return False
