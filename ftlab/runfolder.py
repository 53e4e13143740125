"""The run folder (`trainer.default_root_dir`): names of what a run writes, written atomically.

    config.yaml            the resolved config; `python -m ftlab fit --config config.yaml` replays it
    checkpoints/*.ckpt     Lightning checkpoints holding trainable weights only (plus optimizer state)
    trainable.safetensors  the final trainable weights
    summary.json           what the run was and what it measured (see RunReport)
    logs/                  logger output (metrics.csv; W&B offline files)
    DONE                   written last, only when fit ended normally

Everything is written to a temporary name in the same folder, flushed to disk (fsync) and renamed into
place (os.replace), so a killed run never leaves a half-written file that a later reader would trust; the
temporary file a killed save leaves behind (`.<name>.XXXXXXXX`) is removed by the next fit that takes the
folder's lock (`remove_unfinished`).
Lightning checkpoints go the same way through `AtomicCheckpointIO` (ftlab.cli installs it on every
Trainer's strategy). Text written here passes
through `redact`: the value of any environment variable whose name says it is a secret (API keys,
tokens, passwords) is replaced by its name, so a key that found its way into a config is never saved.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO
from lightning.pytorch.strategies import Strategy
from safetensors.torch import load_file, save_file

from ftlab.errors import FTLabError

CONFIG = "config.yaml"
SUMMARY = "summary.json"
WEIGHTS = "trainable.safetensors"
DONE = "DONE"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
IDLE_SECONDS = 3600  # a temporary checkpoint file untouched this long in a shared folder is a killed save's


SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


def secrets() -> dict[str, str]:
    """Environment variables that hold secrets, by name (values of 6 characters or more)."""
    not_secret = ("_SOCK", "_PATH", "_DIR", "_FILE")  # where a secret lives, not the secret
    return {k: v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 6 and not k.endswith(not_secret)}


def redact(text: str) -> str:
    """`text` with every secret's value (also JSON-escaped) replaced by `<redacted:NAME>`."""
    for name, value in sorted(secrets().items(), key=lambda kv: -len(kv[1])):
        for form in {value, json.dumps(value)[1:-1]}:
            text = text.replace(form, f"<redacted:{name}>")
    return text


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Any) -> None:
    """`write(tmp)` to `.<name>.XXXX` beside `path` (same filesystem, so the rename is atomic), fsync it,
    rename it over `path`, fsync the folder; on any failure the temporary file goes and `path` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        _fsync(tmp)  # the bytes are on disk before the name points at them
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise FTLabError(
            f"no space left on the device writing {path} ({err.strerror}); its previous version is kept: free "
            "space, then resume with --ckpt_path last"
        ) from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder; the rename is still atomic
        _fsync(path.parent)  # and the rename itself survives a crash


def _unfinished(name: str, written: set[str]) -> bool:
    """Whether `name` is the temporary name `atomic_write` gives one of `written` (`.<name>.XXXXXXXX`)."""
    match = re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}", name)
    return match is not None and (match[1] in written or match[1].endswith(".ckpt"))


def remove_unfinished(root: Path, keep_prefix: str, elsewhere: Iterable[Path] = ()) -> list[Path]:
    """Remove the temporary files that saves killed mid-write left in run folder `root` and its checkpoints:
    only the temporary names of what a run writes (config, summary, weights, DONE, checkpoints), never a file
    starting with `keep_prefix` (the lock's own); call it only while holding the folder's lock, when no other
    process writes here. In the checkpoint folders `elsewhere` (a ModelCheckpoint's own `dirpath`, which another
    run may share) only checkpoints' temporary files untouched for IDLE_SECONDS (an hour) go: a save in progress keeps
    writing its file. Returns what it removed."""
    written = {CONFIG, SUMMARY, WEIGHTS, DONE}
    own = [root, root / CHECKPOINTS]
    others = [Path(f) for f in elsewhere if Path(f).resolve() not in {p.resolve() for p in own}]
    idle_since = time.time() - IDLE_SECONDS
    removed = []
    for folder, names, shared in [*((f, written, False) for f in own), *((f, set(), True) for f in others)]:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not (path.is_file() and _unfinished(path.name, names)) or path.name.startswith(keep_prefix):
                continue
            with contextlib.suppress(FileNotFoundError):
                if shared and path.stat().st_mtime > idle_since:
                    continue  # perhaps another run's save, still writing
                path.unlink()
                removed.append(path)
    return removed


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(redact(json.dumps(data, indent=2, sort_keys=True)) + "\n"))


def write_text(path: Path, text: str, redact_secrets: bool = True) -> None:
    """Atomically; secrets redacted unless the text is something to execute (a command that needs them)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(redact(text) if redact_secrets else text))


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", **(metadata or {})}))


def weights_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, saving through `atomic_write`: `torch.save` to a temporary file beside the
    target, fsync, `os.replace`. (Lightning's own save goes through an fsspec transaction that writes in
    $TMPDIR and moves the file: across filesystems that move is a copy, and a killed copy leaves a truncated
    checkpoint under the final name.) Remote URLs (`s3://...`) keep Lightning's save. Loading restricts to
    tensors and plain types (`weights_only=True`) unless a caller explicitly passes False."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        location = map_location if map_location is not None else (lambda storage, loc: storage)
        return super().load_checkpoint(path, map_location=location, weights_only=weights_only is not False)


def use_atomic_checkpoints(strategy: Strategy) -> None:
    """Make `strategy` save through AtomicCheckpointIO, in place of Lightning's default TorchCheckpointIO (also
    inside a wrapper such as AsyncCheckpointIO). A CheckpointIO the config chose itself is left alone.

    Covers every strategy that saves through its `checkpoint_io` (rank 0 writes one file): single device, DDP,
    DDP spawn, and ModelParallelStrategy with `save_distributed_checkpoint: false` (ftlab's FSDP config). With
    `save_distributed_checkpoint: true` ModelParallelStrategy writes a folder of shards through
    torch.distributed.checkpoint and does not use a CheckpointIO."""
    io = strategy.checkpoint_io  # the first access creates Lightning's default
    if type(io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
    elif isinstance(io, _WrappingCheckpointIO) and type(io.checkpoint_io) is TorchCheckpointIO:
        io._checkpoint_io = AtomicCheckpointIO()  # the public setter refuses once a base IO is configured
