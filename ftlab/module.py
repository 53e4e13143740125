"""FineTuneModule: the one LightningModule. It composes a backbone, a method and an objective.

The module is the only place that wires parts together: it loads the backbone (in
`configure_model`, so strategies can shard it), lets the method change it, hands the objective a
`StepContext` (policy and reference), logs `train/<name>` and `val/<name>`, builds the optimizer
from the method's parameter groups, and saves trainable weights only.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from transformers import PreTrainedTokenizerBase

from ftlab import distributed
from ftlab.errors import FTLabError
from ftlab.methods.base import Method
from ftlab.models.backbone import Backbone
from ftlab.objectives.base import Objective, StepContext
from ftlab.regularizers.base import Regularizer
from ftlab.runfolder import load_weights
from ftlab.task_metrics import TaskMetrics

PREFIX = "model."


def check_composition(method: Method, objective: Objective, datamodule: Any, strategy: Any) -> None:
    """Refuse, in one sentence, a run whose parts cannot work together (before the model loads)."""
    produced = getattr(datamodule, "batch_type", None)
    if datamodule is not None and produced is not objective.batch_type:
        raise FTLabError(
            f"objective {objective.name} consumes {objective.batch_type.__name__} batches but datamodule "
            f"{type(datamodule).__name__} yields {getattr(produced, '__name__', 'unknown')} batches"
        )
    if datamodule is not None:
        objective.check_data(datamodule)
    if not method.trains_backbone and not objective.has_head:
        raise FTLabError(
            f"method {method.name} trains only an objective's head, and objective {objective.name} has none"
        )
    if getattr(datamodule, "packing", False) and not method.supports_packing:
        raise FTLabError(f"method {method.name} cannot train on packed rows; set data packing: false")
    distributed.check_strategy(method, strategy)


def _built(part: str, factory: Any, argument: Any) -> Any:
    """`factory(argument)`; the optimizer's or scheduler's refusal of its arguments as one sentence naming it."""
    try:
        return factory(argument)
    except (ValueError, TypeError, KeyError) as err:
        classes = [a for a in (*getattr(factory, "args", ()), factory) if isinstance(a, type)]  # a jsonargparse partial
        name = classes[0].__name__ if classes else getattr(factory, "__qualname__", type(factory).__name__)
        raise FTLabError(f"model.{part} {name}: {err} (check model.{part}.init_args)") from None


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
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.objective = objective
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.decay_1d = decay_1d
        self.regularizers = nn.ModuleList(regularizers or [])
        self.tokenizer: PreTrainedTokenizerBase = backbone.load_tokenizer()
        self.model: nn.Module | None = None
        self.reference_model: nn.Module | None = None
        self.task_metrics: TaskMetrics | None = None
        self._sharded_penalties = False
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
        model = self.backbone.load_model(self.objective.model_class, **self.method.load_kwargs())
        rows = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else None
        if rows is not None and len(self.tokenizer) > rows:
            raise FTLabError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the model's embedding only {rows} rows; "
                "use the model's own tokenizer (model.backbone.init_args.tokenizer)"
            )
        if hasattr(model, "config"):
            model.config.use_cache = False
        if self.objective.needs_reference and not self.method.supports_disable:
            # the method cannot switch itself off: keep a frozen copy of the initial weights as reference
            self.reference_model = copy.deepcopy(model).requires_grad_(False).eval()
        self.model = self.method.apply(model)
        self.objective.setup_model(self.model)
        self.model.train(self.training)  # from_pretrained returns eval mode; Lightning switches modes itself
        strategy = self._trainer.strategy if self._trainer is not None else None
        if distributed.is_ddp(strategy) and self.method.schedules_trainable:
            # DDP registers the parameters that require grad when it wraps the model (after this hook):
            # all that will ever train must be among them; the method's schedule gates them again per step
            for param in self.method.trainable_parameters(self.model).values():
                param.requires_grad_(True)
        mesh = getattr(self, "_device_mesh", None)
        if mesh is not None and distributed.is_sharded(strategy):
            mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
            distributed.shard(self.model, mesh)
            distributed.shard_heads(self.objective, mesh)
            if self.reference_model is not None:
                distributed.shard(self.reference_model, mesh)

    def setup(self, stage: str) -> None:
        check_composition(self.method, self.objective, self.trainer.datamodule, self.trainer.strategy)
        for regularizer in self.regularizers:
            regularizer.check(self)
        # several validation sets (a task mixture): each gets its own copy of the objective's metrics
        names = list(getattr(self.trainer.datamodule, "val_names", None) or [])
        self.task_metrics = TaskMetrics(self.objective, names) if len(names) > 1 else None

    def configure_callbacks(self) -> list[pl.Callback]:
        from ftlab.callbacks.preemption import Preemption
        from ftlab.callbacks.rng import RandomState
        from ftlab.callbacks.run_report import RunReport

        # the regularizers' before the objective's: at fit start the Fisher is estimated with the live reference,
        # before a precomputed DPO reference replaces it (and frees a frozen reference copy)
        own = [c for r in self.regularizers for c in r.callbacks()]
        return [RunReport(), RandomState(), Preemption(), *self.method.callbacks(), *own, *self.objective.callbacks()]

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
        return StepContext(self.model, self.reference, self.tokenizer, *distributed.data_parallel(self))

    # --- steps
    def _checked(self, loss: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Stop on a NaN/inf loss. Reading the value waits for an accelerator, so off the CPU the check runs
        at logging steps only (where Lightning reads the loss anyway), naming the step it was seen at."""
        every = max(1, self.trainer.log_every_n_steps) if self._trainer is not None else 1
        if loss.device.type != "cpu" and self.global_step % every:
            return loss
        bad = not torch.isfinite(loss)
        if self._trainer is not None and self.trainer.world_size > 1:  # every rank stops, or none waits forever
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise FTLabError(
                f"the training loss is {loss.item()} at step {self.global_step} (batch {batch_idx}); "
                "lower the learning rate or check the data"
            )
        return loss

    def _penalties(self) -> dict[str, torch.Tensor]:
        """Every regularizer's penalty, computed before the objective's forward pass: under FSDP the
        parameters must be in their sharded form, like the anchors (the root's stay gathered after a
        forward or `generate` until the next backward, so they are resharded first)."""
        if not len(self.regularizers):
            return {}
        from torch.distributed.fsdp import FSDPModule

        sharded = isinstance(self.model, FSDPModule)
        if sharded:
            self.model.reshard()
        params = self.method.trainable_parameters(self.model)
        penalties = {regularizer.name: regularizer.penalty(self.model, params) for regularizer in self.regularizers}
        self._sharded_penalties = sharded
        return penalties

    def _regularized(self, loss: torch.Tensor, penalties: dict[str, torch.Tensor], metrics: dict) -> torch.Tensor:
        """The objective's loss plus the penalties (each logged as `reg/<name>`; `loss` is the total). Under
        FSDP a rank's penalty covers its own shards: the logged value is summed over the data-parallel ranks."""
        if not penalties:
            return loss
        shown = metrics.get("loss", loss).detach()  # the objective's value (SFT: the global token mean)
        for name, term in penalties.items():
            value = term.detach().clone()
            if self._sharded_penalties:  # the parameters are sharded over the data-parallel group only
                torch.distributed.all_reduce(value, group=distributed.data_parallel(self)[1])
            metrics[f"reg/{name}"] = value
            shown = shown + value
            loss = loss + term
        metrics["loss"] = shown
        return loss

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
        penalties = self._penalties()
        loss, metrics = self.objective.training_step(self.context(), batch)
        loss = self._regularized(loss, penalties, metrics)
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
            penalties = self._penalties()
            loss, step_metrics = self.objective.training_step(self.context(), minibatch)
            loss = self._regularized(loss, penalties, step_metrics)
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
        groups: list[dict[str, Any]] = []
        own = [p for p in self.objective.parameters() if p.requires_grad]
        head = [{"params": own, "name": "objective"}] if own else []
        for group in [*self.method.param_groups(self.model), *head]:
            params = list(group["params"])
            extra = {k: v for k, v in group.items() if k != "params"}
            matrices = [p for p in params if p.ndim >= 2 or self.decay_1d]
            vectors = [p for p in params if p.ndim < 2 and not self.decay_1d]
            if matrices:
                groups.append({"params": matrices, **extra})
            if vectors:
                name = {"name": f"{extra['name']}-no_decay"} if "name" in extra else {}
                groups.append({"params": vectors, **extra, **name, "weight_decay": 0.0})
        if not groups:
            raise FTLabError(f"method {self.method.name} leaves no parameter to train")
        optimizer = _built("optimizer", self.optimizer_factory, groups)
        for group in optimizer.param_groups:
            group["lr"] *= group.get("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = _built("scheduler", self.scheduler_factory, optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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
        head = [p for p in self.objective.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in self.method.trainable_parameters(self.model).values())
        trainable += sum(p.numel() for p in head)
        total = sum(p.numel() for p in self.model.parameters()) + sum(p.numel() for p in head)
        return trainable, total

    # --- weights
    def trainable_state_dict(self, gather: bool = False) -> dict[str, torch.Tensor]:
        """Trainable weights only, keyed as in this module's `state_dict`. With `gather`, sharded
        weights are assembled whole (a collective under FSDP: call it on every rank)."""
        state = {PREFIX + k: v for k, v in self.method.trainable_state_dict(self.model).items()}
        state.update({f"objective.{k}": p.detach() for k, p in self.objective.named_parameters() if p.requires_grad})
        if gather:
            state = {k: distributed.full(v) for k, v in state.items()}
        return state

    def load_trainable(self, source: str | Path | dict[str, torch.Tensor]) -> None:
        """Load trainable weights from a dict, a `.safetensors` file or a Lightning `.ckpt`."""
        if isinstance(source, dict):
            state = source
        elif str(source).endswith(".safetensors"):
            state = load_weights(Path(source))
        else:
            state = torch.load(source, map_location="cpu", weights_only=True)["state_dict"]
        self._check_keys(state, str(source) if not isinstance(source, dict) else "the given weights")
        model_state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
        self.method.load_trainable_state_dict(self.model, model_state)
        own = {k[len("objective.") :]: v for k, v in state.items() if k.startswith("objective.")}
        if own:
            self.objective.load_state_dict(own, strict=False)

    def _check_keys(self, state: dict[str, Any], source: str) -> None:
        own = self.trainable_state_dict()
        if set(state) != set(own):
            extra, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state))
            raise FTLabError(
                f"{source} does not hold this run's trainable weights: "
                f"{len(extra)} unexpected (e.g. {extra[:2]}), {len(missing)} missing (e.g. {missing[:2]})"
            )
        for name, value in state.items():
            shape = tuple(own[name].shape)  # a DTensor reports its whole shape
            if tuple(value.shape) != shape:
                raise FTLabError(
                    f"{source} holds {name} of shape {tuple(value.shape)} where this run has {shape}: it was saved "
                    "with other method settings (the run folder's config.yaml records them)"
                )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict(gather=True)  # dump_checkpoint runs on every rank
        checkpoint["ftlab"] = {
            "method": self.method.name,
            "objective": self.objective.name,
            # whole tensors on the CPU, one at a time, like the weights: a resumed run cuts them into its own shards
            "regularizers": [
                {k: distributed.full(v).detach().cpu() for k, v in r.state_dict().items()} for r in self.regularizers
            ],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # ModelParallelStrategy loads the weights (and optimizer) itself before this hook, skipping names this run
        # lacks (strict_loading is off), and passes the rest of the checkpoint without them: nothing to check here
        if "state_dict" in checkpoint:
            self._check_keys(checkpoint["state_dict"], "the checkpoint")
        saved = checkpoint.get("ftlab", {}).get("regularizers", [])
        for regularizer, state in zip(self.regularizers, saved, strict=False):
            regularizer.load_state_dict(distributed.cut_like_buffers(state, regularizer), strict=False)
