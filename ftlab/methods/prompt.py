"""Prompt tuning (Lester et al., 2021) through peft: trained embeddings prepended to the input.

`num_virtual_tokens · d_model` parameters. Initialisation: random, sampled from the vocabulary's
embeddings, or the embeddings of a text (the paper found vocabulary/text init better than random
for small models). Text init reads the tokenizer saved beside the model.
"""

from __future__ import annotations

from typing import Literal

from peft import PeftConfig, PromptTuningConfig, PromptTuningInit
from torch import nn

from ftlab.errors import FTLabError
from ftlab.methods.peft_method import task_type
from ftlab.methods.prompt_learning import PromptLearning

_INIT = {"random": PromptTuningInit.RANDOM, "vocab": PromptTuningInit.SAMPLE_VOCAB, "text": PromptTuningInit.TEXT}


class PromptTuning(PromptLearning):
    """Trained soft-prompt embeddings before the input (peft).

    Args:
        num_virtual_tokens: Number of soft-prompt tokens.
        init: random, vocab (embeddings of random vocabulary tokens) or text (embeddings of `init_text`).
        init_text: The text for text initialisation, e.g. "Answer the instruction helpfully:".
    """

    def __init__(
        self, num_virtual_tokens: int = 16, init: Literal["random", "vocab", "text"] = "random", init_text: str = ""
    ) -> None:
        if num_virtual_tokens < 1:
            raise FTLabError(f"PromptTuning num_virtual_tokens must be at least 1, got {num_virtual_tokens}")
        if init == "text" and not init_text:
            raise FTLabError("PromptTuning init 'text' needs init_text")
        self.num_virtual_tokens = num_virtual_tokens
        self.init = init
        self.init_text = init_text

    def config(self, model: nn.Module) -> PeftConfig:
        extra = {}
        if self.init == "text":
            extra = {"prompt_tuning_init_text": self.init_text, "tokenizer_name_or_path": model.config._name_or_path}
        return PromptTuningConfig(
            task_type=task_type(model),
            num_virtual_tokens=self.num_virtual_tokens,
            prompt_tuning_init=_INIT[self.init],
            **extra,
        )
