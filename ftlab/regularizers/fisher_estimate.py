"""FisherEstimate: anchors an EWC/L2-SP regularizer at fit start and estimates its Fisher diagonal once.

At fit start (after `configure_model` and after a checkpoint is restored) it
- does nothing when the regularizer already holds anchors (a resumed run: they came from the checkpoint);
- else copies the trainable weights as anchors θ*, and for EWC estimates F on `samples` old examples
  (a seeded choice, so every rank and every rerun scores the same ones), one backward per example;
- reads F from the ftlab cache (`<cache>/fisher/<key>.safetensors`) when the same estimate was made
  before: the key hashes the backbone's description, the method's name, the trainable parameters'
  names, shapes and starting values, the loss used and every chosen example's tensors; with several
  processes the ranks agree first (a hit only when every rank hits), as the estimate runs collectives
  under sharding: one rank computing alone would wait for the others forever;
- for online EWC, adds γ times the Fisher saved in the folder of the run the backbone starts from
  (`ftlab.chain.FromRun`); a warning when that run saved none (it trained without EWC).
At fit end it writes the Fisher it penalised with to `<run folder>/ewc_fisher.safetensors`, for the
next task of a chain: whole tensors, gathered from every rank's shard under FSDP (one parameter at a
time, `DTensor.full_tensor()` on every rank, rank 0 keeping and writing them), so the next task runs
on one process, DDP, or FSDP on any number of ranks and cuts its own shard from the file, as it does
for its parameters. Buffers are built with `zeros_like`/`clone` of each parameter (same placement
and sharding); cache files hold each process's local tensors, so under sharding the key (which
hashes local values) differs per rank and each rank keeps its own shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from contextlib import nullcontext
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from ftlab import runfolder
from ftlab.batches import SFTBatch
from ftlab.data.text import examples_of
from ftlab.errors import FTLabError
from ftlab.models.cache import cache_root
from ftlab.objectives.base import StepContext
from ftlab.objectives.sft import SFT
from ftlab.regularizers.fisher_math import FISHER_FILE, consolidate, empirical_fisher, local

if TYPE_CHECKING:
    from ftlab.regularizers.ewc import EWC

log = logging.getLogger("ftlab")
VERSION = 1  # bump when the estimate changes, so old cache entries are not read
_SFT = SFT()  # its loss only (the LM NLL); its metric states stay unused


def placed(
    values: dict[str, torch.Tensor], like: dict[str, torch.Tensor], whole: bool = False
) -> dict[str, torch.Tensor]:
    """Saved tensors copied into float32 tensors placed (and sharded) like `like`.

    `whole`: the values are whole tensors (a previous run's Fisher file) and each process takes its own
    shard of them, cut locally as the parameter is cut (no communication: every rank read the same
    file); else they are this process's local tensors already (a cache entry)."""
    out = {}
    for name, ref in like.items():
        target = torch.zeros_like(ref, dtype=torch.float32)
        value = values[name]
        if whole:
            if tuple(value.shape) != tuple(ref.shape):
                raise FTLabError(
                    f"the previous run's Fisher of {name} has shape {list(value.shape)}, this run's parameter "
                    f"{list(ref.shape)} (a file written by an older ftlab under FSDP holds one shard only)"
                )
            if isinstance(target, DTensor):
                value = distribute_tensor(
                    value.float(), target.device_mesh, target.placements, src_data_rank=None
                ).to_local()
        local(target).copy_(value)
        out[name] = target
    return out


def gathered(tensors: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
    """Whole tensors on the CPU, where `keep` (rank 0), else {}. A sharded (DTensor) one is gathered from
    every rank's shard, so every rank must call this, in step; one at a time, so a process holds at
    most one gathered parameter on the device."""
    out = {}
    for name, tensor in tensors.items():
        whole = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        if keep:
            out[name] = whole.detach().cpu()
    return out


def lm_loss(model: nn.Module, batch: SFTBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean next-token NLL over the batch's labelled tokens, their count): the SFT objective's own loss
    (every token, for text), so the Fisher and the probe score tokens exactly as training does."""
    return _SFT.loss(StepContext(model=model, reference=nullcontext), batch)


def batch_digest(digest: Any, batch: Any) -> None:
    for f in fields(batch) if is_dataclass(batch) else []:
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            digest.update(value.cpu().contiguous().numpy().tobytes())


class FisherEstimate(pl.Callback):
    """Anchors (and, for EWC, Fisher) of one regularizer, set once at fit start; see the module docstring."""

    def __init__(self, regularizer: EWC) -> None:
        self.regularizer = regularizer
        self.source: str | None = None
        """Where the state came from at the last fit start: checkpoint, cache or computed."""
        self.loss: str | None = None
        """The per-sample loss of the last estimate: lm_nll, or the run's objective's name."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        reg = self.regularizer
        if reg.ready:
            self.source = "checkpoint"
            return
        params = pl_module.method.trainable_parameters(pl_module.model)
        if not params:
            raise FTLabError(
                f"{reg.name} pulls the method's trainable weights towards their start, and method "
                f"{pl_module.method.name} trains none (an objective's head is not covered): drop the regularizer"
            )
        anchors = {name: p.detach().clone() for name, p in params.items()}
        if reg.uses_fisher:
            fisher = self.estimate(pl_module, params, trainer)
            previous = self.previous_fisher(pl_module)
            if previous is not None:
                if set(previous) == set(fisher):  # else consolidate names the mismatch
                    previous = placed(previous, fisher, whole=True)
                fisher = consolidate(previous, fisher, reg.gamma)
            reg.fisher.set(fisher)
        reg.anchors.set(anchors)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        reg = self.regularizer
        if not (reg.uses_fisher and reg.ready):
            return
        tensors = gathered(reg.fisher.get(), keep=trainer.is_global_zero)  # every rank: collectives under FSDP
        if trainer.is_global_zero:
            meta = {"method": pl_module.method.name, "gamma": str(reg.gamma), "strength": str(reg.strength)}
            runfolder.save_weights(Path(trainer.default_root_dir) / FISHER_FILE, tensors, metadata=meta)

    def previous_fisher(self, pl_module: Any) -> dict[str, torch.Tensor] | None:
        """Online EWC: the Fisher the backbone's run penalised with, or None (first task of a chain)."""
        run = getattr(pl_module.backbone, "run", None)
        if not self.regularizer.online or run is None:
            return None
        path = Path(run) / FISHER_FILE
        if not path.is_file():
            log.warning(
                "%s: %s has no %s (trained without EWC?); no Fisher to carry over",
                self.regularizer.name,
                run,
                FISHER_FILE,
            )
            return None
        return runfolder.load_weights(path)

    # --- the estimate
    def loss_fn(self, pl_module: Any, batch: Any) -> tuple[str, Any]:
        """(name, callable): the LM NLL for text/SFT batches, else the run's objective's own loss."""
        if isinstance(batch, SFTBatch):
            return "lm_nll", lambda b: lm_loss(pl_module.model, b)[0]
        return pl_module.objective.name, lambda b: pl_module.objective.training_step(pl_module.context(), b)[0]

    def key(self, pl_module: Any, params: dict[str, nn.Parameter], loss: str, batches: list[Any]) -> str:
        digest = hashlib.sha256()
        head = {
            "v": VERSION,
            "backbone": pl_module.backbone.describe(),
            "method": pl_module.method.name,
            "loss": loss,
            "params": [(name, list(p.shape), str(p.dtype)) for name, p in params.items()],
        }
        digest.update(json.dumps(head, sort_keys=True, default=str).encode())
        for p in params.values():
            digest.update(local(p).detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        for batch in batches:
            batch_digest(digest, batch)
        return digest.hexdigest()[:24]

    def estimate(
        self, pl_module: Any, params: dict[str, nn.Parameter], trainer: pl.Trainer | None = None
    ) -> dict[str, torch.Tensor]:
        """F on the chosen examples, from the cache when every rank finds its entry there."""
        reg = self.regularizer
        examples, collate = examples_of(reg.data, pl_module.tokenizer, reg.max_length, "train")
        chosen = sorted(random.Random(0).sample(range(len(examples)), min(reg.samples, len(examples))))
        batches = [collate([examples[i]]) for i in chosen]  # a batch of one per sample
        loss, compute = self.loss_fn(pl_module, batches[0])
        self.loss = loss
        path = cache_root() / "fisher" / f"{self.key(pl_module, params, loss, batches)}.safetensors"
        hit = reg.cache and path.is_file()
        if trainer is not None and trainer.world_size > 1:
            # under FSDP the forward/backward passes are collectives: all ranks read, or all compute
            hit = bool(trainer.strategy.reduce_boolean_decision(hit, all=True))
        if hit:
            self.source = "cache"
            return placed(runfolder.load_weights(path), params)
        started = time.perf_counter()
        was_training = pl_module.training
        pl_module.eval()  # no dropout: the Fisher of the deterministic model
        try:
            moved = (pl_module.transfer_batch_to_device(b, pl_module.device, 0) for b in batches)
            fisher = empirical_fisher(params, (lambda b=b: compute(b) for b in moved))
        finally:
            pl_module.train(was_training)
            for p in pl_module.parameters():  # the objective's head got gradients too
                p.grad = None
        self.source = "computed"
        log.info("%s: Fisher (%s) on %d samples in %.1fs", reg.name, loss, len(batches), time.perf_counter() - started)
        if reg.cache:
            runfolder.save_weights(path, {name: local(f) for name, f in fisher.items()})
        return fisher
