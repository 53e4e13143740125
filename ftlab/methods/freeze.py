"""Partial fine-tuning: freeze the backbone except the last blocks and chosen parts."""

from __future__ import annotations

import re

from torch import nn

from ftlab.errors import FTLabError
from ftlab.methods.base import Method, set_trainable
from ftlab.models.anatomy import anatomy


class Freeze(Method):
    """Freeze everything, then train the last `last_blocks` blocks and the parts chosen below.

    Args:
        last_blocks: How many of the top transformer blocks train (0 = none).
        patterns: Regular expressions; parameters whose name matches any of them train too.
        embeddings: Train the input embeddings (with tied embeddings, this is also the output head).
        top: Train what sits above the blocks: final norm, pooler and an untied output head.
    """

    def __init__(
        self,
        last_blocks: int = 1,
        patterns: list[str] | None = None,
        embeddings: bool = False,
        top: bool = True,
    ) -> None:
        if last_blocks < 0:
            raise FTLabError(f"Freeze last_blocks must be 0 or more, got {last_blocks}")
        self.last_blocks = last_blocks
        self.patterns = list(patterns or [])
        try:
            self._regexes = [re.compile(p) for p in self.patterns]
        except re.error as err:
            raise FTLabError(f"Freeze pattern {err.pattern!r} is not a valid regular expression: {err}") from err
        self.embeddings = embeddings
        self.top = top

    def chosen(self, model: nn.Module) -> set[str]:
        parts = anatomy(model)
        if self.last_blocks > len(parts.blocks):
            raise FTLabError(f"Freeze last_blocks={self.last_blocks} but the model has {len(parts.blocks)} blocks")
        names: set[str] = set()
        for block in parts.blocks[len(parts.blocks) - self.last_blocks :]:
            names.update(block)
        if self.embeddings:
            names.update(parts.stem)
        if self.top:
            names.update(parts.top)
        all_names = [n for n, _ in model.named_parameters()]
        for regex in self._regexes:
            hits = [n for n in all_names if regex.search(n)]
            if not hits:
                raise FTLabError(f"Freeze pattern {regex.pattern!r} matches no parameter (e.g. {all_names[:4]})")
            names.update(hits)
        if not names:
            raise FTLabError("Freeze leaves no parameter trainable: raise last_blocks or add patterns")
        return names

    def apply(self, model: nn.Module) -> nn.Module:
        set_trainable(model, self.chosen(model))
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return model  # the weights are plain backbone weights already
