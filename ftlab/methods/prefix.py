"""Prefix tuning (Li & Liang, 2021) through peft: trained key/value prefixes at every layer.

Each layer attends to `num_virtual_tokens` extra keys and values; with `projection` they are
produced by a two-layer MLP from a smaller embedding (the paper's reparametrisation), otherwise
trained directly: tokens · layers · 2 · kv_dim parameters (kv_dim = kv heads · head dim).
"""

from __future__ import annotations

from peft import PeftConfig, PrefixTuningConfig
from torch import nn

from ftlab.errors import FTLabError
from ftlab.methods.peft_method import task_type
from ftlab.methods.prompt_learning import PromptLearning


class PrefixTuning(PromptLearning):
    """Trained key/value prefixes at every attention layer (peft).

    Args:
        num_virtual_tokens: Length of the prefix.
        projection: Produce the prefixes with an MLP (Li & Liang's reparametrisation).
        projection_hidden: Hidden size of that MLP.
    """

    supports_activation_checkpointing = False  # the checkpointed blocks drop the prefixes' cache: shapes differ

    def __init__(self, num_virtual_tokens: int = 16, projection: bool = False, projection_hidden: int = 512) -> None:
        if num_virtual_tokens < 1:
            raise FTLabError(f"PrefixTuning num_virtual_tokens must be at least 1, got {num_virtual_tokens}")
        self.num_virtual_tokens = num_virtual_tokens
        self.projection = projection
        self.projection_hidden = projection_hidden

    def config(self, model: nn.Module) -> PeftConfig:
        return PrefixTuningConfig(
            task_type=task_type(model),
            num_virtual_tokens=self.num_virtual_tokens,
            prefix_projection=self.projection,
            encoder_hidden_size=self.projection_hidden,
        )
