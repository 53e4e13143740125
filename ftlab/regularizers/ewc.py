"""Elastic weight consolidation: a quadratic pull towards the starting weights, weighted by a Fisher diagonal.

    penalty = λ/2 · Σ_i F_i (θ_i − θ*_i)²        (Kirkpatrick et al., 2017, eq. 3)

over the method's trainable parameters only. θ* is the trainable weights at the start of the run,
which in sequential fine-tuning is the end of the previous task (the next run starts from its
output, see `ftlab.chain.FromRun`). F is the diagonal of the empirical Fisher on "old" data,
estimated once at fit start by `ftlab.regularizers.fisher_estimate.FisherEstimate`:

    F_i = 1/N Σ_n (∂ℓ_n/∂θ_i)²,   ℓ_n = the loss of old example n alone (a batch of one).

Estimator: the *empirical* Fisher from *per-sample* gradients (the observed old labels, not labels
sampled from the model). Per-sample, because the square of a minibatch's mean gradient estimates
(E g)² + Var(g)/B rather than E[g²]: near the old optimum E g ≈ 0, so a minibatch estimate shrinks by
the batch size and ranks weights by noise. It costs one backward per sample, paid once (and cached).
Empirical rather than true Fisher (labels drawn from the model), because it needs no sampling and is
what most EWC code uses; it is biased where the model fits the old data poorly (Kunstner et al., 2019).

ℓ_n is the LM negative log-likelihood (mean over the labelled tokens of the sample) when the old data
is text or SFT data: for a causal LM the natural "old task" is predicting the old text. When the old
data yields the batch kind the run's own objective consumes and is not text (e.g. classification,
preference pairs), ℓ_n is that objective's loss (the old task's loss, through the current head).
Because ℓ_n is a mean over tokens, F has the scale of one sequence's mean loss, and λ is set against
the training loss.

Refused at setup, in one sentence each:
- prompt data (`PromptBatch`) as old data of an online-RL objective (GRPO, PPO). Such an objective
  has no loss on a prompt alone: its loss needs rollouts (sampled answers, rewards, advantages), and
  a Fisher of freshly sampled answers scored against themselves is not a Fisher of old data. Scoring
  the prompts with the LM loss instead would run, but it would weigh the weights that predict the
  questions' wording, not those that carry the old behaviour, under the name of the old task: a
  quiet substitution. A researcher who wants exactly that gives the prompts as a text file (or the
  old task's answers as SFT data), which says so in the config.
- old data of the objective's own kind for DPO with `precompute_reference`: the precomputed table
  holds the reference of the run's own rows (looked up by row index), not of the old rows, and the
  frozen reference copy it replaces is gone by the Fisher estimate.

Online EWC (Schwarz et al., 2018, "Progress & Compress"): with `online`, a run whose backbone is a
finished run (`ftlab.chain.FromRun`, the previous task) uses F = γ·F_prev + F_new, where F_prev is
the Fisher that run penalised with (saved in its folder as `ewc_fisher.safetensors`) and F_new the
one estimated now on the previous task's data.
Differences from the papers: one quadratic term anchored at the current run's start (online EWC);
no per-task anchors; Fisher normalised per sample rather than scaled by the dataset size.

Anchors and Fisher are buffers (created with `zeros_like`/`clone` of each parameter, so a sharded
DTensor parameter gets sharded buffers): they move with the module and travel in checkpoints, so a
resumed run keeps its anchors and does not re-estimate the Fisher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback
from torch import nn
from transformers import AutoModelForCausalLM

from ftlab.batches import SFTBatch
from ftlab.data.base import FineTuneDataModule
from ftlab.errors import FTLabError
from ftlab.regularizers.base import Regularizer
from ftlab.regularizers.fisher_estimate import FisherEstimate
from ftlab.regularizers.fisher_math import FISHER_FILE, consolidate, empirical_fisher, local, quadratic_penalty

__all__ = ["EWC", "FISHER_FILE", "TensorStore", "consolidate", "empirical_fisher", "local", "quadratic_penalty"]


class TensorStore(nn.Module):
    """Named tensors kept as buffers (parameter names with '.' stored as '/'), restorable from a state
    dict before they exist: loading a checkpoint creates them, with the saved values."""

    def set(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in list(self._buffers):
            del self._buffers[name]
        for name, value in tensors.items():
            self.register_buffer(name.replace(".", "/"), value)

    def get(self) -> dict[str, torch.Tensor]:
        return {name.replace("/", "."): value for name, value in self._buffers.items()}

    def __len__(self) -> int:
        return len(self._buffers)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        mine = {
            k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix) and "." not in k[len(prefix) :]
        }
        for key, value in mine.items():
            if key not in self._buffers:
                self.register_buffer(key, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def old_data_is_text(data: str | FineTuneDataModule) -> bool:
    return isinstance(data, str) or getattr(data, "batch_type", None) is SFTBatch


class EWC(Regularizer):
    """Elastic weight consolidation (see the module docstring for the estimator and its loss).

    Args:
        data: The old data: a text file (e.g. WikiText-2 for a base model's general text, or the
            previous task's text) or a datamodule (e.g. the previous task's SFT data).
        strength: λ in λ/2 · Σ F_i (θ_i − θ*_i)².
        samples: Old examples (text chunks or data rows) in the Fisher estimate, one backward each.
        max_length: Tokens per chunk when `data` is a text file.
        online: Online EWC: add `gamma` times the Fisher saved by the run the backbone starts from
            (`ftlab.chain.FromRun`); the first task of a chain (any other backbone) has none.
        gamma: Decay of the previous Fisher in online EWC.
        cache: Keep the estimate in the ftlab cache, keyed by backbone, trainable weights and data.
    """

    uses_fisher: ClassVar[bool] = True

    def __init__(
        self,
        data: str | FineTuneDataModule,
        strength: float = 1.0,
        samples: int = 64,
        max_length: int = 256,
        online: bool = False,
        gamma: float = 1.0,
        cache: bool = True,
    ) -> None:
        super().__init__()
        if strength < 0 or not 0.0 <= gamma <= 1.0 or samples < 1:
            raise FTLabError(f"{self.name} needs strength >= 0, 0 <= gamma <= 1 and samples >= 1")
        if data is None and self.uses_fisher:
            raise FTLabError(f"{self.name} needs old data (a text file or a datamodule) to estimate its Fisher on")
        if isinstance(data, str) and not Path(data).expanduser().is_file():
            raise FTLabError(f"{self.name} old data file {data} not found")
        self.data = data
        self.strength = strength
        self.samples = samples
        self.max_length = max_length
        self.online = online
        self.gamma = gamma
        self.cache = cache
        self.anchors = TensorStore()
        self.fisher = TensorStore()

    @property
    def ready(self) -> bool:
        """Anchored (and estimated) already: at fit start of a resumed run, from its checkpoint."""
        return len(self.anchors) > 0 and (len(self.fisher) > 0 or not self.uses_fisher)

    def penalty(self, model: nn.Module, params: dict[str, nn.Parameter]) -> torch.Tensor:
        if not self.ready:
            raise FTLabError(f"{self.name} has no anchors yet: its FisherEstimate callback runs at fit start")
        anchors = self.anchors.get()
        if set(anchors) != set(params):
            raise FTLabError(f"{self.name} was anchored on other parameters than the method trains now")
        weights = self.fisher.get() if self.uses_fisher else None
        return 0.5 * self.strength * quadratic_penalty(params, anchors, weights)

    def callbacks(self) -> list[Callback]:
        return [FisherEstimate(self)]

    def check(self, module: Any) -> None:
        if not self.uses_fisher:
            return
        objective = module.objective
        if old_data_is_text(self.data):
            if objective.model_class is not AutoModelForCausalLM:
                raise FTLabError(
                    f"{self.name} estimates its Fisher on text with the LM loss, which needs a causal LM, but "
                    f"objective {objective.name} loads {objective.model_class.__name__}; give data of its own kind"
                )
            return
        kind = f"{self.name}'s old data {type(self.data).__name__} yields {self.data.batch_type.__name__} batches"
        if not objective.consumes(self.data.batch_type):
            raise FTLabError(
                f"{kind}, which objective {objective.name} cannot score; give text, SFT data or data of the "
                "objective's kind"
            )
        if objective.needs_rollouts:
            raise FTLabError(
                f"{kind}, i.e. prompt data; an online-RL objective ({objective.name}) has no loss on prompts "
                "alone: give a text file or an SFT datamodule (e.g. the old task's answers) as old data"
            )
        if getattr(objective, "precompute_reference", False):
            raise FTLabError(
                f"{kind}, but objective {objective.name} precomputes its reference for the run's own rows only: "
                "set precompute_reference: false, or give text or SFT data as old data"
            )
