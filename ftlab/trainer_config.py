"""What the CLI sets in the trainer's config before anything is built: every output in the run folder, and
checkpoints that a killed run can resume from.

- `place_outputs`: the CSV, TensorBoard and W&B loggers write to `<run>/logs`, checkpoints go to
  `<run>/checkpoints` (a ModelCheckpoint's own `dirpath` is kept).
- `checkpoint_every`: `--checkpoint_every_n_steps N` sets every ModelCheckpoint to save every N optimizer steps
  (or adds ftlab's, keeping only last.ckpt).
- `keep_last_checkpoints`: Lightning's `ModelCheckpoint(save_last=true, save_top_k=0)` with no step or time
  trigger writes last.ckpt only when training ends (Lightning 2.6); it becomes ftlab's ModelCheckpoint
  (ftlab.callbacks.checkpoint), which writes it at each epoch's end, as the config asks. Said in one line.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from jsonargparse import Namespace

from ftlab import runfolder
from ftlab.errors import FTLabError

_LOGS_IN = {"CSVLogger": "save_dir", "TensorBoardLogger": "save_dir", "WandbLogger": "save_dir"}
FTLAB_CHECKPOINT = "ftlab.callbacks.ModelCheckpoint"
LIGHTNING_CHECKPOINT = (
    "lightning.pytorch.callbacks.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
)


def _entries(value: Any) -> list[Namespace]:
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, Namespace) and "class_path" in item]


def checkpoint_every(trainer_cfg: Namespace, steps: int) -> None:
    """Every ModelCheckpoint of the run saves every `steps` optimizer steps (with `save_last`, that is last.ckpt);
    a run with none gets one that keeps only last.ckpt."""
    found = [c for c in _entries(trainer_cfg.get("callbacks")) if c.class_path.endswith("ModelCheckpoint")]
    for callback in found:
        callback.init_args["every_n_train_steps"] = steps
        if callback.init_args.get("save_last") is None:
            callback.init_args["save_last"] = True
    if found:
        return
    if trainer_cfg.get("enable_checkpointing") is False:
        raise FTLabError("--checkpoint_every_n_steps needs checkpointing, but trainer.enable_checkpointing is false")
    added = Namespace(
        class_path=FTLAB_CHECKPOINT,
        init_args=Namespace(every_n_train_steps=steps, save_last=True, save_top_k=0),
    )
    callbacks = trainer_cfg.get("callbacks")
    callbacks = [] if callbacks is None else callbacks if isinstance(callbacks, list) else [callbacks]
    trainer_cfg.callbacks = [*callbacks, added]


def place_outputs(trainer_cfg: Namespace) -> None:
    """Point loggers and checkpoints into the run folder (`trainer.default_root_dir`)."""
    if trainer_cfg.get("default_root_dir") is None:
        trainer_cfg.default_root_dir = os.getcwd()
    root = str(trainer_cfg.default_root_dir)
    for logger in _entries(trainer_cfg.get("logger")):
        kind = logger.class_path.rsplit(".", 1)[-1]
        if kind in _LOGS_IN:
            logger.init_args[_LOGS_IN[kind]] = os.path.join(root, runfolder.LOGS)
            if kind != "WandbLogger":
                logger.init_args["name"] = ""
                logger.init_args["version"] = ""
    for callback in _entries(trainer_cfg.get("callbacks")):
        if callback.class_path.endswith("ModelCheckpoint") and callback.init_args.get("dirpath") is None:
            callback.init_args["dirpath"] = os.path.join(root, runfolder.CHECKPOINTS)


def keep_last_checkpoints(trainer_cfg: Namespace) -> None:
    """Lightning's ModelCheckpoint that keeps only last.ckpt and has no step or time trigger becomes ftlab's, which
    writes last.ckpt at every epoch's end (Lightning's writes it only when training ends)."""
    for callback in _entries(trainer_cfg.get("callbacks")):
        args = callback.get("init_args") or Namespace()
        last_only = bool(args.get("save_last")) and args.get("save_top_k", 1) == 0
        stepped = (args.get("every_n_train_steps") or 0) > 0 or args.get("train_time_interval") is not None
        stepped = stepped or args.get("every_n_epochs") == 0  # no epoch saves asked for
        if callback.class_path in LIGHTNING_CHECKPOINT and last_only and not stepped:
            callback.class_path = FTLAB_CHECKPOINT
            print(
                "ftlab: trainer.callbacks: Lightning's ModelCheckpoint with save_top_k 0 writes last.ckpt only when"
                f" training ends; using {FTLAB_CHECKPOINT}, which writes it at every epoch's end",
                file=sys.stderr,
            )


def checkpoint_dirs(trainer_cfg: Namespace) -> list[str]:
    """The folders the run's ModelCheckpoints write to (after `place_outputs`: each has one)."""
    found = _entries(trainer_cfg.get("callbacks"))
    return [
        str(c.init_args["dirpath"])
        for c in found
        if c.class_path.endswith("ModelCheckpoint") and c.init_args.get("dirpath")
    ]
