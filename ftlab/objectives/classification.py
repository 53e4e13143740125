"""Sequence classification: a classifier head on pooled backbone features, trained with cross-entropy.

The backbone is a bare `AutoModel` (an encoder such as BERT, or a decoder with `last` pooling); its
hidden states are pooled to one vector per sequence (`ftlab.models.heads.pool`) and a small head
owned by this objective gives the logits, so any method (Full, LoRA, FeatureExtraction) composes
with it. This is BERT's fine-tuning recipe (Devlin et al., 2019) with the head moved out of the
model (BERT feeds [CLS] through its tanh pooler; `cls` pooling here skips that pooler). Mean
pooling, the default, is sentence-transformers' (Reimers & Gurevych, 2019), which all-MiniLM-L6-v2
was trained with. Train metrics are the batch loss and accuracy; validation keeps torchmetrics
states for the loss, accuracy (micro) and macro F1, aggregated over the epoch and across ranks.

A backbone with no trainable parameter is a fixed feature extractor: it runs without gradients and
in eval mode (no dropout), so its features are the same every epoch. With `cache_features` they are
computed once per example and kept by `batch.index` (one cache for training, one for validation),
so later epochs cost only the head. Each cached entry carries a fingerprint of its tokens (a
position-weighted sum of the ids, a cheap check rather than a hash): an example whose tokens
differ from the cached ones under the same index (other data, a new datamodule) is recomputed.
The cache lives on the features' device and is not saved in checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ClassVar, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from transformers import AutoModel

from ftlab.batches import ClassificationBatch
from ftlab.errors import FTLabError
from ftlab.models.heads import ClassifierHead, Pooling, pool
from ftlab.objectives.base import Metrics, Objective, StepContext

FeatureCache = dict[int, tuple[int, torch.Tensor]]
"""example index -> (token fingerprint, pooled features [H])"""


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [B, C] against class ids [B], computed in float32."""
    return F.cross_entropy(logits.float(), labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of rows whose arg-max class is the label."""
    return (logits.argmax(-1) == labels).float().mean()


def fingerprint(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t (t + 1) · id_t over the real tokens of each row [B, T] -> [B] (changes when a token or its place does)."""
    positions = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device)
    return (input_ids * mask.long() * positions).sum(1)


def trains_nothing(model: nn.Module) -> bool:
    return not any(p.requires_grad for p in model.parameters())


def take(tensor: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if tensor is None else tensor.index_select(0, rows)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Switch dropout off inside the context and restore the previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class Classification(Objective):
    """Sequence classification with a head of its own, on any `AutoModel` backbone.

    Args:
        num_labels: Number of classes; must equal the datamodule's.
        pooling: How hidden states become one vector: mean (over real tokens), cls (first token),
            last (last real token, for decoder backbones).
        head_hidden: Width of one hidden layer in the head; None for a linear head.
        dropout: Dropout in the head.
        cache_features: Compute a frozen backbone's features once per example and reuse them
            (needs a method that trains no backbone weight, such as FeatureExtraction).
    """

    batch_type: ClassVar[type] = ClassificationBatch
    model_class: ClassVar[Any] = AutoModel
    has_head: ClassVar[bool] = True

    def __init__(
        self,
        num_labels: int,
        pooling: Pooling = "mean",
        head_hidden: int | None = None,
        dropout: float = 0.1,
        cache_features: bool = False,
    ) -> None:
        super().__init__()
        if num_labels < 2:
            raise FTLabError(f"objective Classification needs num_labels of 2 or more, got {num_labels}")
        if pooling not in get_args(Pooling):
            raise FTLabError(f"objective Classification pooling must be one of {get_args(Pooling)}, got {pooling!r}")
        self.num_labels = num_labels
        self.pooling = pooling
        self.head_hidden = head_hidden
        self.dropout = dropout
        self.cache_features = cache_features
        self.head: ClassifierHead | None = None
        self.caches: dict[str, FeatureCache] = {"train": {}, "val": {}}
        self.val_loss = MeanMetric()
        self.val_accuracy = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes=num_labels, average="macro")

    # --- setup and checks
    def setup_model(self, model: nn.Module) -> None:
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if not isinstance(hidden, int):
            name = type(model).__name__
            raise FTLabError(f"objective Classification needs the backbone's config.hidden_size; {name} has none")
        self.check_cache(model)
        if self.head is None:
            self.head = ClassifierHead(hidden, self.num_labels, self.head_hidden, self.dropout)
        elif self.head.in_features != hidden:
            width = self.head.in_features
            raise FTLabError(f"objective Classification already has a head for width {width}, not {hidden}")

    def check_cache(self, model: nn.Module) -> None:
        if self.cache_features and not trains_nothing(model):
            n = sum(p.numel() for p in model.parameters() if p.requires_grad)
            raise FTLabError(
                f"objective Classification caches features only for a frozen backbone, but {n:,} backbone "
                "parameters train; use method FeatureExtraction or set cache_features: false"
            )

    def check_num_labels(self, num_labels: int | None) -> None:
        if num_labels and num_labels != self.num_labels:
            raise FTLabError(
                f"the datamodule has {num_labels} labels but objective Classification has "
                f"num_labels={self.num_labels}; set model.objective.init_args.num_labels={num_labels}"
            )

    def check_data(self, datamodule: Any) -> None:
        """Before the model loads: the datamodule's label count must equal num_labels."""
        self.check_num_labels(getattr(datamodule, "num_labels", None))

    # --- features and logits
    def encode(self, model: nn.Module, batch: ClassificationBatch) -> torch.Tensor:
        """Pooled features [B, H] from the backbone."""
        extra = {} if batch.token_type_ids is None else {"token_type_ids": batch.token_type_ids}
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **extra)
        hidden = out.last_hidden_state[:, -batch.input_ids.shape[1] :]  # drop virtual tokens a method prepends
        return pool(hidden, batch.attention_mask, self.pooling)

    def frozen_features(self, model: nn.Module, batch: ClassificationBatch) -> torch.Tensor:
        with torch.no_grad(), eval_mode(model):
            return self.encode(model, batch)

    def cached_features(self, model: nn.Module, batch: ClassificationBatch, cache: FeatureCache) -> torch.Tensor:
        keys = batch.index.tolist()
        prints = fingerprint(batch.input_ids, batch.attention_mask).tolist()
        todo = [row for row, (key, fp) in enumerate(zip(keys, prints, strict=True)) if cache.get(key, (None,))[0] != fp]
        if todo:
            sub = batch
            if len(todo) < len(keys):
                rows = torch.tensor(todo, device=batch.input_ids.device)
                fields = ("input_ids", "attention_mask", "token_type_ids")
                sub = replace(batch, **{k: take(getattr(batch, k), rows) for k in fields})
            for row, feature in zip(todo, self.frozen_features(model, sub), strict=True):
                cache[keys[row]] = (prints[row], feature)
        return torch.stack([cache[key][1] for key in keys])

    def logits(self, model: nn.Module, batch: ClassificationBatch, split: str) -> torch.Tensor:
        if self.head is None:
            raise FTLabError("objective Classification has no head yet: setup_model(model) builds it")
        if self.cache_features:
            self.check_cache(model)  # a schedule may have unfrozen weights since setup
            features = self.cached_features(model, batch, self.caches[split])
        elif trains_nothing(model):
            features = self.frozen_features(model, batch)
        else:
            features = self.encode(model, batch)
        weight = self.head.layers[-1].weight
        return self.head(features.to(weight.dtype))

    # --- steps
    def training_step(self, ctx: StepContext, batch: ClassificationBatch) -> tuple[torch.Tensor, Metrics]:
        logits = self.logits(ctx.model, batch, "train")
        loss = classification_loss(logits, batch.labels)
        return loss, {"loss": loss.detach(), "accuracy": accuracy(logits.detach(), batch.labels)}

    def validation_step(self, ctx: StepContext, batch: ClassificationBatch) -> Metrics:
        logits = self.logits(ctx.model, batch, "val")
        self.val_loss.update(classification_loss(logits, batch.labels), weight=len(batch))
        self.val_accuracy.update(logits, batch.labels)
        self.val_f1.update(logits, batch.labels)
        return {"loss": self.val_loss, "accuracy": self.val_accuracy, "f1_macro": self.val_f1}
