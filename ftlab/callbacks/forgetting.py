"""ForgettingProbe: perplexity on held-out general text before training and at every validation.

Catastrophic forgetting shows as a rise in the model's perplexity on text it was good at before
fine-tuning. The probe measures exp(token-weighted mean NLL) on a fixed slice of a text file (the
bundled WikiText-2 excerpt by default; `experiments/callbacks/forgetting.yaml` points at the full
WikiText-2 test split) or on a datamodule's validation rows (e.g. the previous task's data in
sequential fine-tuning: then "perplexity" is exp of that task's answer loss). It logs, at the end of
every validation (sanity checks excepted), `<prefix>/ppl`, `<prefix>/ppl_before` and
`<prefix>/delta_ppl = ppl − ppl_before`, so they land in summary.json's metrics. The "before"
value is measured at fit start and kept in the callback's checkpoint state, so a resumed run keeps
the original baseline. A run with no validation data logs nothing.

Every process scores the same rows (no sharding of the probe data), so the value needs no reduction
and sharded models run their collectives in step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from transformers import AutoModelForCausalLM

from ftlab.batches import SFTBatch
from ftlab.data.base import FineTuneDataModule
from ftlab.data.text import examples_of
from ftlab.errors import FTLabError
from ftlab.regularizers.fisher_estimate import lm_loss

BUNDLED_TEXT = str(Path(__file__).resolve().parent.parent / "assets" / "wikitext2_sample.txt")

__all__ = ["BUNDLED_TEXT", "ForgettingProbe"]


class ForgettingProbe(pl.Callback):
    """Perplexity on held-out text, before training and at every validation.

    Args:
        data: A text file, or a datamodule whose validation rows (train rows when it has none) are scored.
        max_length: Tokens per row when `data` is a text file.
        max_tokens: Score only the first rows holding about this many tokens (bounds the probe's cost).
        batch_size: Rows per forward pass.
        prefix: Metric prefix; two probes (general text, previous task) need different ones.
    """

    def __init__(
        self,
        data: str | FineTuneDataModule = BUNDLED_TEXT,
        max_length: int = 256,
        max_tokens: int = 16384,
        batch_size: int = 8,
        prefix: str = "forget",
    ) -> None:
        if isinstance(data, str) and not Path(data).expanduser().is_file():
            raise FTLabError(f"ForgettingProbe text file {data} not found")
        if max_length < 2 or max_tokens < max_length or batch_size < 1:
            raise FTLabError("ForgettingProbe needs max_length >= 2, max_tokens >= max_length and batch_size >= 1")
        self.data = data
        self.max_length = max_length
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.prefix = prefix
        self.before: float | None = None
        self._batches: list[Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)  # two probes keep two baselines

    def state_dict(self) -> dict[str, Any]:
        return {"before": self.before}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.before = state.get("before")

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if pl_module.objective.model_class is not AutoModelForCausalLM:
            raise FTLabError(
                f"ForgettingProbe measures perplexity, which needs a causal LM; objective {pl_module.objective.name} "
                f"loads {pl_module.objective.model_class.__name__}"
            )
        produced = getattr(self.data, "batch_type", SFTBatch)
        if produced is not SFTBatch:
            raise FTLabError(f"ForgettingProbe scores text or SFT data, not {produced.__name__} batches")

    def batches(self, pl_module: Any) -> list[Any]:
        if self._batches is None:
            examples, collate = examples_of(self.data, pl_module.tokenizer, self.max_length, split="val")
            kept, tokens = [], 0
            for example in examples:
                if tokens >= self.max_tokens:
                    break
                kept.append(example)
                tokens += len(example.input_ids)
            self._batches = [collate(kept[i : i + self.batch_size]) for i in range(0, len(kept), self.batch_size)]
        return self._batches

    @torch.no_grad()
    def perplexity(self, pl_module: Any) -> float:
        """exp(Σ NLL / Σ labelled tokens) over the probe rows, with dropout off."""
        model = pl_module.model
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            for batch in self.batches(pl_module):
                batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                mean, n = lm_loss(model, batch)
                total, count = total + float(mean) * int(n), count + int(n)
        finally:
            model.train(was_training)
        if count == 0:
            raise FTLabError(f"ForgettingProbe data {self.data} has no labelled token")
        return math.exp(total / count)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.before is None:  # a resumed run keeps the baseline of its first start
            self.before = self.perplexity(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or self.before is None:
            return
        ppl = self.perplexity(pl_module)
        for name, value in (("ppl", ppl), ("ppl_before", self.before), ("delta_ppl", ppl - self.before)):
            pl_module.log(f"{self.prefix}/{name}", value, on_step=False, on_epoch=True, batch_size=1)
