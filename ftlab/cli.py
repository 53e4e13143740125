"""`python -m ftlab fit|validate|test|predict --config a.yaml --config b.yaml [--key=value ...]`,
`python -m ftlab export RUN_DIR` (see ftlab.export), and `python -m ftlab sweep STUDY.yaml` /
`python -m ftlab results STUDY_DIR` (see ftlab.sweep).

A LightningCLI over the one module (backbone + method + objective) and any ftlab datamodule.
Later `--config` files override earlier ones, so a run reads as base + method + objective.
`--print_config` prints the composed config, which replays the run when passed back.
Everything a run writes lands in `trainer.default_root_dir` (see ftlab.runfolder): ftlab points
the CSV, TensorBoard and W&B loggers and the checkpoint callback there, and saves checkpoints atomically
(runfolder.AtomicCheckpointIO). Under SLURM the trainer gets Lightning's SLURMEnvironment with auto_requeue off,
unless the config names a cluster environment: preemption and requeue are ftlab's (ftlab.callbacks.preemption).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.environments import ClusterEnvironment, SLURMEnvironment

from ftlab import console, resume, runfolder
from ftlab.errors import FTLabError
from ftlab.run_parser import COMPOSITION, add_run_options
from ftlab.runlock import LOCK, RunLock, is_launched_rank
from ftlab.trainer_config import checkpoint_dirs, checkpoint_every, keep_last_checkpoints, place_outputs


class SaveRunConfig(SaveConfigCallback):
    """Writes the resolved config to `<run folder>/config.yaml` (secrets from the environment redacted) and hands
    the same nested config to every logger (W&B's run config) when training starts: once the model is built and a
    resumed checkpoint restored and checked, so a fit that fails to start leaves the folder as it was (and is not
    taken for a started run)."""

    _text: str | None = None

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        config = self.config.clone()
        config.overwrite = False  # replaying the saved config must never delete a run's outputs
        config.ckpt_path = None  # nor silently resume one
        config.pop("checkpoint_every_n_steps", None)  # already in the trainer's callbacks
        self._text = runfolder.redact(self.parser.dump(config, skip_none=False))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._text is None:
            return
        text, self._text = self._text, None
        if trainer.is_global_zero:
            runfolder.write_text(Path(trainer.default_root_dir) / runfolder.CONFIG, text)
        hparams = yaml.safe_load(text)
        hparams.pop("overwrite", None)
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)


_LOCKS: list[RunLock] = []


def guard_run_folder(config: Namespace) -> None:
    """A fit holds its run folder (a lock), never writes over a finished or started run unless asked (resume it or
    pass --overwrite), and checks a checkpoint it resumes from before anything in the folder changes."""
    root = Path(config.trainer.default_root_dir)
    if not is_launched_rank():  # ranks a launcher started run under rank 0's lock
        lock = RunLock(root)
        lock.acquire()
        _LOCKS.append(lock)
        for path in runfolder.remove_unfinished(root, LOCK, checkpoint_dirs(config.trainer)):
            print(f"ftlab: removed {path}, left by a save that was killed mid-write", file=sys.stderr)
    ckpt = config.get("ckpt_path")
    if ckpt:
        path = resume.resolve(root, str(ckpt))
        if path is not None:
            resume.check(path, config.get("model"))
        return
    if not (root / runfolder.CONFIG).exists():
        return
    if not config.get("overwrite"):
        state = "a finished run" if (root / runfolder.DONE).exists() else "a started run"
        raise FTLabError(
            f"run folder {root} already holds {state}; resume it with --ckpt_path last, "
            "pass --overwrite true to start over, or choose another --trainer.default_root_dir"
        )
    if is_launched_rank():
        return  # start over once: the first process clears, the ranks it launches find the folder cleared
    for name in (runfolder.DONE, runfolder.SUMMARY, runfolder.WEIGHTS, runfolder.CHECKPOINTS, runfolder.LOGS):
        path = root / name  # start over: what the old run wrote goes, DONE first
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    for path in root.glob("hpc_ckpt_*.ckpt"):  # Lightning's SLURM saves: a requeued job would resume from them
        path.unlink(missing_ok=True)


def slurm_plugins(configured: Any) -> Any:
    """The trainer's plugins plus SLURMEnvironment(auto_requeue=False) when Lightning would detect SLURM (a batch
    job or srun step, not an allocation named bash/interactive) and the config names no cluster environment:
    Lightning's requeue handler saves from inside the signal handler, mid-step; ftlab's Preemption saves at the step
    boundary and requeues itself. Anything else comes back as it was."""
    if not SLURMEnvironment.detect():
        return configured
    items = [] if configured is None else list(configured) if isinstance(configured, list) else [configured]
    if any(isinstance(plugin, ClusterEnvironment) for plugin in items):
        return configured
    return [*items, SLURMEnvironment(auto_requeue=False)]


class FTLabCLI(LightningCLI):
    """ftlab's command line: LightningCLI with the run folder contract."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            **{**COMPOSITION, "parser_kwargs": {**COMPOSITION["parser_kwargs"], "prog": "ftlab"}},
            save_config_callback=SaveRunConfig,
            save_config_kwargs={"save_to_log_dir": False, "overwrite": True},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: Any) -> None:
        add_run_options(parser)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        if "plugins" not in kwargs:
            configured = self._get(self.config_init, "trainer", default={}).get("plugins")
            plugins = slurm_plugins(configured)
            if plugins is not configured:
                kwargs["plugins"] = plugins
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:  # Trainer options that contradict each other: the user's to fix
            raise FTLabError(f"trainer: {err}") from err
        runfolder.use_atomic_checkpoints(trainer.strategy)  # checkpoints: temp name beside, fsync, rename
        return trainer

    def before_fit(self) -> None:
        """A resumed fit keeps the CSV rows logged before its checkpoint (Lightning's writer deletes them); online RL
        warns when its first rollout batches carry no reward signal."""
        if getattr(self.model.objective, "rewards", None) is not None:
            from ftlab.callbacks.flat_rewards import FlatRewards

            self.trainer.callbacks.append(FlatRewards())
        if self.config.fit.get("ckpt_path"):
            from ftlab.callbacks.log_history import KeepCSVHistory

            keep = KeepCSVHistory.read(self.trainer)
            if keep is not None:
                self.trainer.callbacks.append(keep)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("checkpoint_every_n_steps"):
            checkpoint_every(config.trainer, int(config.checkpoint_every_n_steps))  # a plain int: the config is dumped
        keep_last_checkpoints(config.trainer)
        place_outputs(config.trainer)
        if self.subcommand == "fit":
            guard_run_folder(config)


def check_config_files(argv: list[str]) -> None:
    """Name the file when a `--config` YAML is missing or malformed (the parser would say only "a string")."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path = Path(argv[i + 1])
        elif arg.startswith("--config="):
            path = Path(arg.split("=", 1)[1])
        else:
            continue
        if not path.is_file():
            raise FTLabError(f"config file {path} does not exist")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise FTLabError(f"config file {path} is not valid YAML at{where}: {problem}") from None


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
            check_config_files(argv)
            console.quiet()
            cli = FTLabCLI(args=args)  # None: LightningCLI reads sys.argv itself (both at once draw its warning)
            if cli.subcommand == "fit" and cli.trainer.is_global_zero:
                console.report_fit(Path(cli.trainer.default_root_dir))
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"ftlab: error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        while _LOCKS:
            _LOCKS.pop().release()


def user_error(err: BaseException) -> FTLabError | None:
    """The FTLabError behind `err`, also when the config parser wrapped it (it validates by instantiating)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, FTLabError):
            return current
        stack += [current.__cause__, current.__context__]
    message = str(err)
    for line in message.splitlines():  # the parser keeps only the text of the errors it collects
        if line.strip().startswith("- ") and line.strip()[2:].startswith(("data ", "method ", "objective ")):
            return FTLabError(line.strip()[2:])
    return None
