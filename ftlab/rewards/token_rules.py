"""Rewards computed on completion token ids alone: a synthetic, verifiable task for testing RL end to end.

`TokenShare(token_id)` rewards the share of a completion's tokens that equal one target token. A tiny
pretrained model learns to raise it within a few hundred GRPO steps on CPU, so it checks that a rollout,
objective and optimizer loop actually improves a reward, with no dataset or verifier involved.

A reward function named by import path cannot take options, so this one is a small callable class, built in
YAML through class_path/init_args; its instances are the reward functions. It sees no tokenizer, so it
takes the token's id: find it with the run's tokenizer, e.g.
`tokenizer.convert_tokens_to_ids("the")` (the token as the vocabulary spells it: byte-level BPE vocabularies
write a leading space as "Ġ", SentencePiece ones as "▁"; `tokenizer.tokenize(" the")` shows the spelling), or
`tokenizer(" the", add_special_tokens=False).input_ids` when the text is one token.
"""

from __future__ import annotations

from typing import Any

from ftlab.errors import FTLabError


def token_share(ids: list[int], token_id: int) -> float:
    """The share of `ids` equal to `token_id`; 0.0 for an empty list.

    >>> token_share([5, 7, 5, 5], 5)
    0.75
    """
    return ids.count(token_id) / len(ids) if ids else 0.0


class TokenShare:
    """Reward: the share of each completion's tokens equal to `token_id` (0.0 for an empty completion).

    The share is over the ids the caller passes as `completion_ids`: the generated tokens without padding
    (an EOS that ends the completion counts as one of its tokens if the caller includes it).

    Args:
        token_id: The target token's id in the run's tokenizer (see the module docstring to find it).
    """

    def __init__(self, token_id: int) -> None:
        if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
            raise FTLabError(f"TokenShare token_id must be a non-negative token id, got {token_id!r}")
        self.token_id = token_id
        self.__name__ = "token_share"  # the name a caller logs the reward under, as for a function

    def __call__(
        self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], **columns: list[Any]
    ) -> list[float]:
        return [token_share(list(ids), self.token_id) for ids in completion_ids]

    def __repr__(self) -> str:
        return f"TokenShare(token_id={self.token_id})"
