"""RunReport: measures a run and writes its summary, final weights and DONE marker.

Throughput counts non-padding tokens (counted at collate time on the host, so measuring costs no
device sync) and is logged as `perf/tokens_per_sec` every `log_every_n_steps`. `startup_seconds` is the time
from ftlab's import in this process to its first training batch (imports, config, model, data, checkpoint).

Memory is reported twice, named by where it is held:

- `peak_device_memory_mb` / `peak_device_reserved_mb`: the accelerator allocator's peak of allocated and
  of reserved memory (`torch.cuda.max_memory_allocated` / `max_memory_reserved`), read when training ends,
  while the module is still on its device (Lightning moves it back to the CPU before `on_fit_end`);
  None on a CPU run.
- `peak_host_memory_mb`: the process's peak resident set size (which includes the Python runtime and
  libraries: compare host numbers only with each other).

`peak_memory_mb` is the one results tables and plots use: the device peak where there is one, else the
host's; `peak_memory_kind` says which (`device_allocated` or `host_rss`).
"""

from __future__ import annotations

import importlib.metadata
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

import ftlab
from ftlab import runfolder


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("ftlab", "torch", "lightning", "transformers", "peft", "datasets"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().float().cpu())
    return float(value) if isinstance(value, (int, float)) else None


def peak_host_memory_mb() -> float:
    """The process's peak resident set size in MiB (ru_maxrss is in kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_device_memory_mb(device: torch.device) -> dict[str, float] | None:
    """The CUDA allocator's peaks on `device` since the last reset, in MiB; None off CUDA."""
    if device.type != "cuda":
        return None
    return {
        "allocated": torch.cuda.max_memory_allocated(device) / 2**20,
        "reserved": torch.cuda.max_memory_reserved(device) / 2**20,
    }


def memory_report(device_peak: dict[str, float] | None, host_peak: float) -> dict[str, Any]:
    """The summary's memory fields: device and host peaks named as such, and the one tables use."""
    device = device_peak or {}
    return {
        "peak_memory_mb": device.get("allocated", host_peak),
        "peak_memory_kind": "device_allocated" if device_peak else "host_rss",
        "peak_device_memory_mb": device.get("allocated"),
        "peak_device_reserved_mb": device.get("reserved"),
        "peak_host_memory_mb": host_peak,
    }


class RunReport(pl.Callback):
    """Counts tokens and time, logs throughput, and writes summary.json, weights and DONE at fit end.

    It also makes a run that stops at `max_steps` in the middle of an epoch validate its final weights.
    """

    def __init__(self) -> None:
        self.tokens = 0
        self.curve: list[tuple[int, float]] = []
        self._window_tokens = 0
        self._window_start = 0.0
        self._fit_start = 0.0
        self._train_time = 0.0
        self._paused_at = 0.0
        self._device_peak: dict[str, float] | None = None
        self.startup_seconds: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "curve": self.curve, "train_time": self._train_time}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokens = state["tokens"]
        self.curve = [tuple(x) for x in state["curve"]]
        self._train_time = state["train_time"]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self.startup_seconds is None:  # this process's start-up: imports, config, model, data, checkpoint
            self.startup_seconds = time.time() - ftlab.STARTED

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._window_start = time.perf_counter()
        self._window_tokens = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            # Stopping through should_stop makes Lightning validate once more, so a run that ends
            # mid-epoch at max_steps still reports validation metrics for its final weights.
            trainer.should_stop = True
        n = int(getattr(batch, "num_tokens", 0))
        self.tokens += n
        self._window_tokens += n
        if (trainer.global_step % max(1, trainer.log_every_n_steps)) != 0:
            return
        now = time.perf_counter()
        elapsed = now - self._window_start
        self._train_time += elapsed
        if elapsed > 0:
            pl_module.log("perf/tokens_per_sec", self._window_tokens / elapsed, on_step=True, on_epoch=False)
        loss = _scalar(trainer.callback_metrics.get("train/loss"))
        if loss is not None:
            self.curve.append((trainer.global_step, loss))
        self._window_start, self._window_tokens = now, 0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._paused_at = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._window_start += time.perf_counter() - self._paused_at  # validation is not training time

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_time += time.perf_counter() - self._window_start
        self._window_start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the last hook before teardown moves the module off its device: the allocator's peak is read here
        self._device_peak = peak_device_memory_mb(pl_module.device)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from ftlab.callbacks.preemption import preempted

        if preempted(trainer):  # unfinished: no summary, no DONE; `--ckpt_path last` resumes it
            return
        root = Path(trainer.default_root_dir)
        summary = self.summary(trainer, pl_module)
        weights = pl_module.trainable_state_dict(gather=True)  # a collective under FSDP: every rank gathers
        if trainer.is_global_zero:
            runfolder.save_weights(root / runfolder.WEIGHTS, weights)
            runfolder.write_json(root / runfolder.SUMMARY, summary)
            runfolder.write_text(root / runfolder.DONE, "")
        trainer.strategy.barrier("ftlab-run-report")

    def summary(self, trainer: pl.Trainer, pl_module: Any) -> dict[str, Any]:
        trainable, total = pl_module.count_parameters()
        metrics = {k: v for k, v in ((k, _scalar(v)) for k, v in trainer.callback_metrics.items()) if v is not None}
        datamodule = trainer.datamodule
        return {
            "method": pl_module.method.name,
            "objective": pl_module.objective.name,
            "backbone": pl_module.backbone.describe(),
            "trainable_params": trainable,
            "total_params": total,
            "steps": trainer.global_step,
            "epochs": trainer.current_epoch,
            "tokens_seen": self.tokens * trainer.world_size,
            "tokens_per_sec": self.tokens * trainer.world_size / self._train_time if self._train_time else None,
            **memory_report(self._device_peak, peak_host_memory_mb()),
            "wall_seconds": time.perf_counter() - self._fit_start,
            "startup_seconds": self.startup_seconds,
            "train_loss": self.curve[-1][1] if self.curve else metrics.get("train/loss"),
            "train_loss_first": self.curve[0][1] if self.curve else None,
            "loss_curve": self.curve,
            "val_loss": metrics.get("val/loss"),
            "val_ppl": metrics.get("val/ppl"),
            "metrics": metrics,
            "data": dict(getattr(datamodule, "stats", {}) or {}),
            "seed": int(os.environ["PL_GLOBAL_SEED"]) if "PL_GLOBAL_SEED" in os.environ else None,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "device": str(pl_module.device),
            "versions": _versions(),
        }
