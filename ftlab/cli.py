"""`python -m ftlab fit|validate|test|predict --config a.yaml --config b.yaml [--key=value ...]`,
`python -m ftlab export RUN_DIR` (see ftlab.export), and `python -m ftlab sweep STUDY.yaml` /
`python -m ftlab results STUDY_DIR` (see ftlab.sweep).

A LightningCLI over the one module (backbone + method + objective) and any ftlab datamodule.
Later `--config` files override earlier ones, so a run reads as base + method + objective.
`--print_config` prints the composed config, which replays the run when passed back.
Everything a run writes lands in `trainer.default_root_dir` (see ftlab.runfolder): ftlab points
the CSV, TensorBoard and W&B loggers and the checkpoint callback there.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from ftlab import runfolder
from ftlab.data.base import FineTuneDataModule
from ftlab.errors import FTLabError
from ftlab.module import FineTuneModule

_LOGS_IN = {"CSVLogger": "save_dir", "TensorBoardLogger": "save_dir", "WandbLogger": "save_dir"}


class SaveRunConfig(SaveConfigCallback):
    """Writes the resolved config to `<run folder>/config.yaml` at the start of fit."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        path = Path(trainer.default_root_dir) / runfolder.CONFIG
        runfolder.write_text(path, self.parser.dump(self.config, skip_none=False))


def _entries(value: Any) -> list[Namespace]:
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, Namespace) and "class_path" in item]


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


class FTLabCLI(LightningCLI):
    """ftlab's command line: LightningCLI with the run folder contract."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            FineTuneModule,
            FineTuneDataModule,
            subclass_mode_data=True,
            save_config_callback=SaveRunConfig,
            save_config_kwargs={"save_to_log_dir": False, "overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"allow_abbrev": False},  # a mistyped key is an error, not a prefix match
            args=args,
            run=run,
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        place_outputs(config.trainer)


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if args is None else args
    try:
        if argv[:1] == ["export"]:
            from ftlab.export import main as export_main

            export_main(argv[1:])
        elif argv[:1] in (["sweep"], ["results"]):
            from ftlab.sweep.cli import main as sweep_main

            sweep_main(argv)
        else:
            FTLabCLI(args=argv)
    except FTLabError as err:
        print(f"ftlab: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
