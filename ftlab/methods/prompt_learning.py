"""Shared code of peft's prompt-learning methods (prefix tuning, prompt tuning): virtual tokens."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ftlab.errors import FTLabError
from ftlab.methods.peft_method import PeftMethod, task_type


class PromptLearning(PeftMethod):
    """Base of peft prompt-learning methods: `num_virtual_tokens` before the input, the backbone frozen."""

    supports_packing: ClassVar[bool] = False  # virtual tokens would sit only before the first packed example
    supports_fsdp: ClassVar[bool] = False
    mergeable: ClassVar[bool] = False  # virtual tokens are not a weight update
    num_virtual_tokens: int

    @property
    def virtual_tokens(self) -> int:
        return self.num_virtual_tokens

    def prepare(self, model: nn.Module) -> nn.Module:
        if task_type(model) is None:
            raise FTLabError(f"{self.name} cannot place virtual tokens in a {type(model).__name__}")
        return model
