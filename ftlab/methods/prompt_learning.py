"""Shared code of peft's prompt-learning methods (prefix tuning, prompt tuning)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from peft import PeftConfig, PeftModel, get_peft_model
from torch import nn

from ftlab.errors import FTLabError
from ftlab.methods.base import Method
from ftlab.methods.lora import task_type


class PromptLearning(Method):
    """Base of peft prompt-learning methods: virtual tokens, the backbone frozen."""

    supports_disable: ClassVar[bool] = True
    supports_packing: ClassVar[bool] = False  # virtual tokens would sit only before the first packed example
    supports_fsdp: ClassVar[bool] = False

    def config(self, model: nn.Module) -> PeftConfig:
        raise NotImplementedError

    def apply(self, model: nn.Module) -> nn.Module:
        if isinstance(model, PeftModel):
            return model
        if task_type(model) is None:
            raise FTLabError(f"{self.name} cannot place virtual tokens in a {type(model).__name__}")
        return get_peft_model(model, self.config(model))

    @contextmanager
    def disabled(self, model: nn.Module) -> Iterator[nn.Module]:
        with model.disable_adapter():
            yield model
