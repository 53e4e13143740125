"""The shared Method contract of every peft-backed method: a subclass is its peft config.

peft injects the trained modules (`get_peft_model`), switches them off (`disable_adapter`: the
reference policy for free), folds them into the weights for export (`merge_and_unload`) and, where
the update is a plain weight delta, for decoding (`merge_adapter` / `unmerge_adapter`). A subclass
gives `config(model)` and, where it must, checks the backbone in `prepare(model)` before injection;
capabilities stay class attributes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from peft import PeftConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from ftlab.errors import FTLabError
from ftlab.methods.base import Method

_TASKS = {"ForCausalLM": TaskType.CAUSAL_LM, "ForSequenceClassification": TaskType.SEQ_CLS}


def task_type(model: nn.Module) -> TaskType | None:
    """peft's task type from the model class: a causal LM, a sequence classifier, or a bare encoder/decoder."""
    name = type(model).__name__
    task = next((task for suffix, task in _TASKS.items() if name.endswith(suffix)), None)
    if task is None and name.endswith("Model"):  # BertModel, LlamaModel: hidden states for an objective's head
        return TaskType.FEATURE_EXTRACTION
    return task


def linear_leaf_names(model: nn.Module) -> list[str]:
    """Names (last component) of the linear layers a peft tuner could target."""
    from transformers.pytorch_utils import Conv1D

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))})


def check_targets(method: str, targets: list[str] | str | None, model: nn.Module) -> None:
    """Refuse target module names that match nothing in `model`, listing its linear layers (a string such as
    "all-linear", or None for peft's defaults, is peft's to resolve)."""
    if not isinstance(targets, list):
        return
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise FTLabError(
            f"{method} target_modules {missing} match no module of {type(model).__name__}; "
            f"its linear layers are {linear_leaf_names(model)}"
        )


class PeftMethod(Method):
    """Base of the methods peft implements: apply, disable, merge and decoding come from peft."""

    supports_disable: ClassVar[bool] = True
    mergeable: ClassVar[bool] = True
    """peft can fold the method into plain backbone weights (`merge`, for export)."""

    def config(self, model: nn.Module) -> PeftConfig:
        """The peft config of this method for `model`."""
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> nn.Module:
        """Check (and ready) the backbone before peft injects the method; the model to inject into. By
        default: target module names (a `target_modules` attribute) that match nothing are refused."""
        check_targets(self.name, getattr(self, "target_modules", None), model)
        return model

    def apply(self, model: nn.Module) -> nn.Module:
        if isinstance(model, PeftModel):
            return model
        return get_peft_model(self.prepare(model), self.config(model))

    @contextmanager
    def disabled(self, model: nn.Module) -> Iterator[nn.Module]:
        with model.disable_adapter():
            yield model

    def merge(self, model: nn.Module) -> nn.Module:
        if not self.mergeable:
            return super().merge(model)
        return model.merge_and_unload()

    @contextmanager
    def merged_for_decoding(self, model: nn.Module) -> Iterator[nn.Module]:
        if not self.merges_for_decoding:
            with super().merged_for_decoding(model) as same:
                yield same
            return
        with torch.no_grad():
            model.merge_adapter()
        try:
            yield model
        finally:
            with torch.no_grad():
                model.unmerge_adapter()
