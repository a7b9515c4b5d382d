"""Run checkpoints: atomic writes, ``weights_only`` loads, RNG state capture.

A checkpoint holds only tensors and primitive containers, so ``torch.load(weights_only=True)``
can read it: loading never unpickles objects or runs code. Writes go to a temporary file in the
same directory, are fsync'ed and then renamed over the previous checkpoint, so a kill while
saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_framework.errors import CheckpointError

FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


def checkpoint_path(run_dir: Path | str) -> Path:
    """Where a run keeps its last complete checkpoint."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST


def experience_checkpoint_path(run_dir: Path | str, experience: int) -> Path:
    """The checkpoint kept after experience ``experience`` (1-based) with
    ``trainer.keep_experience_checkpoints=true``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"experience-{experience:02d}.ckpt"


def keep_copy(source: Path, target: Path) -> Path:
    """A durable copy of a finished checkpoint (hard link where the filesystem allows)."""
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return target


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(tmp: Path, payload: dict[str, Any]) -> None:
    """Serialise ``payload`` into ``tmp`` and flush it to disk (separate for fault injection)."""
    with tmp.open("wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_save(payload: dict[str, Any], path: Path) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write_file(tmp, payload)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; every failure is a CheckpointError."""
    path = Path(path)
    if path.is_dir():
        path = checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(
            str(path),
            "not found",
            "pass resume=<run dir> of a run that saved a checkpoint (checkpoints/last.ckpt)",
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            str(path),
            f"contains objects that are not plain tensors or primitive types ({first[:160]})",
            "only load checkpoints written by cl_framework; this file was refused unread",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            str(path), f"unreadable or truncated ({type(exc).__name__}: {str(exc)[:160]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            str(path),
            f"not a cl_framework run checkpoint of format {FORMAT_VERSION}",
            "resume from a run directory written by this version of cl_framework",
        )
    return payload


# ----------------------------------------------------------------------------- RNG
def capture_global_rng() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states as tensors / primitive containers."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "algorithm": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_state_to_primitive(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["algorithm"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    random.setstate(_python_state_from_primitive(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_primitive(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_primitive(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


# ----------------------------------------------------------------------- schedulers
def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """A scheduler's state with ``Counter``s (MultiStepLR milestones) as plain dicts."""
    return {
        k: ({"__counter__": dict(v)} if isinstance(v, Counter) else v)
        for k, v in scheduler.state_dict().items()
    }


def load_scheduler_state(scheduler: Any, state: dict[str, Any]) -> None:
    scheduler.load_state_dict(
        {
            k: (Counter(v["__counter__"]) if isinstance(v, dict) and "__counter__" in v else v)
            for k, v in state.items()
        }
    )
