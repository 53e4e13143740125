"""Checks a resume makes before it touches the run folder.

`--ckpt_path last|hpc|PATH` is resolved here the way Lightning resolves it, and the checkpoint is opened and
compared with the composed run (method, objective) before anything in the folder is deleted or rewritten:
a resume that cannot go on stops with one sentence and leaves the folder as it was. What needs the model built
(the trainable weights' names and shapes) is checked by the module when the checkpoint is restored
(`FineTuneModule.on_load_checkpoint`), still before config.yaml or the metrics are written (ftlab.cli defers them
to the start of training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ftlab import runfolder
from ftlab.errors import FTLabError


def resolve(root: Path, ckpt: str) -> Path | None:
    """The file `--ckpt_path` names: `last` is the newest `*last*.ckpt` in the run's checkpoints (or Lightning's
    SLURM `hpc_ckpt_N.ckpt` saves), `hpc` the newest hpc save; None for a remote URL (not checked here)."""
    if "://" in ckpt:
        return None
    if ckpt in ("last", "hpc"):
        folder = root / runfolder.CHECKPOINTS
        found = list(folder.glob("*last*.ckpt")) if ckpt == "last" else []
        found = found or [*root.glob("hpc_ckpt_*.ckpt"), *folder.glob("hpc_ckpt_*.ckpt")]
        if not found:
            raise FTLabError(
                f"--ckpt_path {ckpt}: run folder {root} holds no checkpoint to resume (nothing in {folder}); "
                "start over with --overwrite true, or name a checkpoint file"
            )
        return max(found, key=lambda p: p.stat().st_mtime)
    if ckpt == "best":
        return None  # Lightning's ModelCheckpoint knows its best model; its file is checked when loaded
    path = Path(ckpt)
    if not path.exists():
        raise FTLabError(f"checkpoint {ckpt} does not exist (--ckpt_path last resumes the run folder's last one)")
    return path


def read(path: Path) -> dict[str, Any]:
    """The checkpoint's contents (tensors memory-mapped, plain types only), or one sentence on why it cannot be."""
    if path.is_dir():
        return {}  # a distributed checkpoint (a folder of shards): the strategy reads and checks it
    if path.stat().st_size == 0:
        raise FTLabError(f"checkpoint {path} is empty (a save that never finished); resume from another one")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError... for a damaged file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FTLabError(
            f"checkpoint {path} cannot be read ({reason}): it is truncated or not a checkpoint; "
            "resume from another one or start over with --overwrite true"
        ) from None


def _class_name(component: Any) -> str | None:
    class_path = component.get("class_path") if hasattr(component, "get") else None
    return str(class_path).rsplit(".", 1)[-1] if class_path else None


def check(path: Path, model_config: Any) -> None:
    """Refuse a checkpoint saved by a run of another method or objective than `model_config` composes."""
    checkpoint = read(path)
    saved = checkpoint.get("ftlab", {}) if isinstance(checkpoint, dict) else {}
    for part in ("method", "objective"):
        wanted = _class_name(model_config.get(part)) if model_config is not None else None
        if saved.get(part) and wanted and saved[part] != wanted:
            raise FTLabError(
                f"checkpoint {path} was saved by a run with {part} {saved[part]}, but this run's {part} is "
                f"{wanted}; resume with the config it was saved with (the run folder's {runfolder.CONFIG})"
            )
