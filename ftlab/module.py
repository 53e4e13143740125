"""FineTuneModule: the one LightningModule. It composes a backbone, a method and an objective.

The module is the only place that wires parts together: it builds the models in `configure_model` (so
strategies can shard them; `ftlab.model_build`), hands the objective a `StepContext` (policy, reference and
what the method tells objectives), adds the regularizers' penalties (`ftlab.penalties`), logs
`train/<name>` and `val/<name>`, builds the optimizer from the method's parameter groups
(`ftlab.optimization`), and saves trainable weights only (`ftlab.trainable_weights`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from transformers import PreTrainedTokenizerBase

from ftlab import distributed, optimization
from ftlab import trainable_weights as weights
from ftlab.composition import check_composition
from ftlab.loss_check import check_finite
from ftlab.methods.base import Method
from ftlab.model_build import Speed, build_models
from ftlab.models.backbone import Backbone
from ftlab.objectives.base import Objective, StepContext
from ftlab.penalties import Penalties, penalties
from ftlab.regularizers.base import Regularizer
from ftlab.task_metrics import TaskMetrics

__all__ = ["FineTuneModule", "check_composition"]


class FineTuneModule(pl.LightningModule):
    """A fine-tuning run: backbone + method + objective, optimised by Lightning.

    Args:
        backbone: Where the pretrained model and tokenizer come from.
        method: Which parameters train and how the backbone is changed (Full, Freeze, LoRA, ...).
        objective: The loss (SFT, ...).
        optimizer: Optimizer class and arguments; the parameters come from the method.
        scheduler: Learning-rate schedule, stepped every optimizer step.
        decay_1d: Apply weight decay to 1-D parameters (biases, norms) too; off by default.
        regularizers: Terms added to the objective's loss at every step (EWC, L2-SP).
        compile: Compile each transformer block (true, or a dict of torch.compile options); off by default.
        activation_checkpointing: Recompute each block's activations in the backward pass (less memory).
        frozen_dtype: Hold the frozen weights in this dtype (bfloat16), the trained ones in float32; needs
            trainer.precision bf16-mixed. Off by default.
        liger: Liger's Triton kernels for the blocks' RMSNorm, SwiGLU and RoPE (CUDA, `ftlab[liger]`).
    """

    def __init__(
        self,
        backbone: Backbone,
        method: Method,
        objective: Objective,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        decay_1d: bool = False,
        regularizers: list[Regularizer] | None = None,
        compile: bool | dict[str, Any] = False,
        activation_checkpointing: bool = False,
        frozen_dtype: str | None = None,
        liger: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.objective = objective
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.decay_1d = decay_1d
        self.regularizers = nn.ModuleList(regularizers or [])
        self.speed = Speed(compile, activation_checkpointing, frozen_dtype, liger)
        self.speed.check(method)
        self.tokenizer: PreTrainedTokenizerBase = backbone.load_tokenizer()
        self.model: nn.Module | None = None
        self.reference_model: nn.Module | None = None
        self.task_metrics: TaskMetrics | None = None
        self.strict_loading = False  # checkpoints hold trainable weights only; keys are checked below
        # online RL runs several optimizer steps per batch (rollouts, then updates): the module steps itself
        self.automatic_optimization = not objective.needs_rollouts

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """DDP must not broadcast regularizer state (anchors, Fisher: as large as the trainable weights) at every
        step: each rank computes or loads the same values itself."""
        return [name for name, _ in self.named_buffers() if name.startswith("regularizers.")]

    # --- building
    def configure_model(self) -> None:
        if self.model is not None:
            return
        strategy = self._trainer.strategy if self._trainer is not None else None
        mesh = getattr(self, "_device_mesh", None)
        self.model, self.reference_model = build_models(
            self.backbone,
            self.method,
            self.objective,
            self.tokenizer,
            strategy,
            mesh,
            self.training,
            self.speed,
        )

    def setup(self, stage: str) -> None:
        check_composition(self.method, self.objective, self.trainer.datamodule, self.trainer.strategy)
        self.speed.check(self.method, self.trainer.precision, self.trainer.strategy.root_device)
        for regularizer in self.regularizers:
            regularizer.check(self)
        # several validation sets (a task mixture): each gets its own copy of the objective's metrics
        names = list(getattr(self.trainer.datamodule, "val_names", None) or [])
        self.task_metrics = TaskMetrics(self.objective, names) if len(names) > 1 else None

    def configure_callbacks(self) -> list[pl.Callback]:
        from ftlab.callbacks import epoch_boundary, preemption, rng, run_report

        # the regularizers' before the objective's: at fit start the Fisher is estimated with the live reference,
        # before a precomputed DPO reference replaces it (and frees a frozen reference copy)
        own = [c for r in self.regularizers for c in r.callbacks()]
        resume = [rng.RandomState(), epoch_boundary.EpochBoundary(), preemption.Preemption()]
        return [run_report.RunReport(), *resume, *self.method.callbacks(), *own, *self.objective.callbacks()]

    @contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """The reference policy, without gradients or dropout: a frozen copy of the initial model where
        one was made, else the model with the method switched off (no second model in memory)."""
        if self.reference_model is not None:
            with torch.no_grad():
                yield self.reference_model.eval()
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.method.disabled(self.model) as ref:
                yield ref
        finally:
            self.model.train(was_training)

    def context(self) -> StepContext:
        merged = partial(self.method.merged_for_decoding, self.model) if self.method.merges_for_decoding else None
        return StepContext(
            self.model,
            self.reference,
            self.tokenizer,
            *distributed.data_parallel(self),
            virtual_tokens=self.method.virtual_tokens,
            merged=merged,
        )

    # --- steps
    def _checked(self, loss: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return check_finite(loss, self._trainer, self.global_step, batch_idx)

    def _regularized(self, loss: torch.Tensor, terms: Penalties, metrics: dict) -> torch.Tensor:
        return terms.added_to(loss, metrics, distributed.data_parallel(self)[1] if terms.sharded else None)

    def _log_train(self, metrics: dict[str, torch.Tensor], batch_size: int, sync: bool = False) -> None:
        for name, value in metrics.items():
            self.log(
                f"train/{name}",
                value,
                on_step=True,
                on_epoch=False,
                prog_bar=name == "loss",
                batch_size=batch_size,
                sync_dist=sync,
            )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if not self.automatic_optimization:
            return self._rollout_step(batch, batch_idx)
        terms = penalties(self.regularizers, self.method, self.model)
        loss, metrics = self.objective.training_step(self.context(), batch)
        loss = self._regularized(loss, terms, metrics)
        self._checked(loss, batch_idx)
        self._log_train(metrics, len(batch))
        return loss

    def _rollout_step(self, batch: Any, batch_idx: int) -> None:
        """Online RL: rollouts from this batch, then the objective's updates, each one optimizer step."""
        started = time.perf_counter()
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        buffer, metrics = self.objective.make_rollouts(self.context(), batch)
        updates: list[dict[str, torch.Tensor]] = []
        for minibatch in self.objective.minibatches(buffer):
            terms = penalties(self.regularizers, self.method, self.model)
            loss, step_metrics = self.objective.training_step(self.context(), minibatch)
            loss = self._regularized(loss, terms, step_metrics)
            optimizer.zero_grad()
            self.manual_backward(self._checked(loss, batch_idx))
            if self.objective.max_grad_norm:
                self.clip_gradients(
                    optimizer, gradient_clip_val=self.objective.max_grad_norm, gradient_clip_algorithm="norm"
                )
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            updates.append(step_metrics)
        for name in updates[0]:
            metrics[name] = torch.stack([u[name] for u in updates]).mean()
        generating = self.objective.generate_seconds
        if generating is not None:
            metrics["perf/generation_share"] = torch.tensor(generating / max(time.perf_counter() - started, 1e-9))
        self._log_train(metrics, len(batch), sync=True)  # rewards and KL: the mean over every rank's rollouts

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.task_metrics is not None:
            return self._validate_task(batch, dataloader_idx)
        metrics = self.objective.validation_step(self.context(), batch)
        for name, value in metrics.items():
            self.log(
                f"val/{name}",
                value,
                on_step=False,
                on_epoch=True,
                prog_bar=name == "loss",
                batch_size=len(batch),
                sync_dist=isinstance(value, torch.Tensor),
            )

    def _validate_task(self, batch: Any, dataloader_idx: int) -> None:
        """One task of a mixture: the objective updates this task's metrics, logged as `val/<task>/<name>`."""
        task = self.task_metrics.tasks[dataloader_idx]
        with self.task_metrics.swapped(self.objective, task):
            metrics = self.objective.validation_step(self.context(), batch)
        for name, value in metrics.items():
            self.task_metrics.record(task, name, value, len(batch))
            self.log(
                f"val/{task}/{name}",
                value,
                on_epoch=True,
                batch_size=len(batch),
                add_dataloader_idx=False,
                sync_dist=isinstance(value, torch.Tensor),
            )

    def on_validation_epoch_end(self) -> None:
        if self.task_metrics is None:
            return
        for name, value in self.task_metrics.means().items():  # val/<name>: the unweighted mean over tasks
            self.log(f"val/{name}", value, prog_bar=name == "loss", sync_dist=True)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    # --- optimisation
    def configure_optimizers(self) -> Any:
        groups = optimization.param_groups(self.method, self.model, self.objective, self.decay_1d)
        return optimization.optimizers(groups, self.optimizer_factory, self.scheduler_factory)

    def on_train_start(self) -> None:
        """A schedule that takes the run's length from the trainer learns it here, not in `configure_optimizers`:
        with `max_epochs` set the estimate loads the training loader, and a loader loaded before a checkpoint is
        restored never receives its saved position (a resumed run would restart the epoch's order). A resumed
        schedule already holds the length it was saved with."""
        for config in self.trainer.lr_scheduler_configs:
            if getattr(config.scheduler, "total_steps", 0) is None:
                config.scheduler.total_steps = int(self.trainer.estimated_stepping_batches)

    def count_parameters(self) -> tuple[int, int]:
        """(trainable over the run, total) parameters of the model and the objective's head."""
        return weights.count_parameters(self.method, self.model, self.objective)

    # --- weights
    def trainable_state_dict(self, gather: bool = False) -> dict[str, torch.Tensor]:
        """Trainable weights only, keyed as in this module's `state_dict`. With `gather`, sharded
        weights are assembled whole (a collective under FSDP: call it on every rank)."""
        return weights.trainable_state(self.method, self.model, self.objective, gather)

    def load_trainable(self, source: str | Path | dict[str, torch.Tensor]) -> None:
        """Load trainable weights from a dict, a `.safetensors` file or a Lightning `.ckpt`."""
        state = weights.read_state(source)
        name = str(source) if not isinstance(source, dict) else "the given weights"
        weights.check_keys(state, self.trainable_state_dict(), name)
        weights.load_state(self.method, self.model, self.objective, state)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict(gather=True)  # dump_checkpoint runs on every rank
        checkpoint["ftlab"] = {
            "method": self.method.name,
            "objective": self.objective.name,
            "regularizers": weights.regularizer_states(self.regularizers),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # ModelParallelStrategy loads the weights (and optimizer) itself before this hook, skipping names this run
        # lacks (strict_loading is off), and passes the rest of the checkpoint without them: nothing to check here
        if "state_dict" in checkpoint:
            weights.check_keys(checkpoint["state_dict"], self.trainable_state_dict(), "the checkpoint")
        weights.load_regularizer_states(self.regularizers, checkpoint.get("ftlab", {}).get("regularizers", []))
