"""A reward function's faults are one sentence naming the function: what it returned, or where it raised."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ftlab.errors import FTLabError
from ftlab.rewards.sources import FunctionReward

ROLLOUT = SimpleNamespace(prompts=["p", "q"], completions=["yes", "no"], completion_ids=[[1], [2]], columns={})
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (None, "reward function odd returned NoneType, not a list of 2 numbers (one per completion)"),
        (1.0, "reward function odd returned float, not a list of 2 numbers"),
        ("10", "reward function odd returned str, not a list of 2 numbers"),
        ({"a": 1.0, "b": 2.0}, "reward function odd returned dict, not a list of 2 numbers"),
        ([1.0], "reward function odd returned 1 values for 2 completions"),
        ([1.0, "high"], "reward function odd returned 'high' (str) for completion 1, not a number"),
        ([None, 1.0], "reward function odd returned None (NoneType) for completion 0, not a number"),
        ([1.0, float("inf")], "reward function odd returned a non-finite value (inf) for completion 1"),
        (torch.ones(2, 2), "reward function odd returned an array of shape (2, 2), not 2 numbers"),
    ],
)
def test_bad_reward_outputs_are_named(returned: object, message: str) -> None:
    with pytest.raises(FTLabError) as info:
        FunctionReward(lambda **_: returned, name="odd").score(ROLLOUT, CPU)
    assert message in str(info.value)


@pytest.mark.parametrize("returned", [[1, 0.5], (True, False), np.array([1.0, 0.5]), torch.tensor([1.0, 0.5])])
def test_sequences_of_numbers_are_accepted(returned: object) -> None:
    scores = FunctionReward(lambda **_: returned, name="fine").score(ROLLOUT, CPU)
    assert scores.dtype == torch.float32 and scores.tolist() == [float(v) for v in list(returned)]


def test_a_reward_function_that_raises_is_named_with_its_file_and_line() -> None:
    def needs_answer(prompts, completions, completion_ids, **columns) -> list[float]:
        return [float(c == columns["answer"]) for c in completions]  # no 'answer' column in these prompts

    with pytest.raises(FTLabError) as info:
        FunctionReward(needs_answer).score(ROLLOUT, CPU)
    text = str(info.value)
    assert text.startswith("reward function needs_answer raised KeyError at ")
    assert f"{__file__}:" in text and text.endswith(": 'answer'")
