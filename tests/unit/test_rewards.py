"""Reward functions on hand-written completions: GSM8K exact match and format, token share."""

import doctest
from collections.abc import Callable

import pytest
from jsonargparse import ArgumentParser

import ftlab.rewards.gsm8k
import ftlab.rewards.token_rules
from ftlab.errors import FTLabError
from ftlab.rewards.gsm8k import extract_answer, gsm8k_exact_match, gsm8k_format
from ftlab.rewards.token_rules import TokenShare


def call(fn: Callable, completions: list[str], ids: list[list[int]] | None = None, **columns) -> list[float]:
    return fn(["prompt"] * len(completions), completions, ids or [[]] * len(completions), **columns)


@pytest.mark.parametrize(
    ("completion", "answer", "reward"),
    [
        ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18, so the answer is #### 1,234", "1234", 1.0),
        ("#### 12", "13", 0.0),
        ("I do not know.", "1", 0.0),
        ("#### 18.0", "18", 1.0),
        ("#### 18", "18.00", 1.0),
        ("She makes 9 * 2 = 18 dollars.", "18", 1.0),  # no '####': the last number
        ("She makes 9 * 2 = 18 dollars, not 20.", "18", 0.0),
        ("#### 7 and then 9", "7", 1.0),  # the first number after '####'
        ("#### 3\nwait, #### 4", "4", 1.0),  # the last '####' counts
        ("5 is my guess ####", "5", 0.0),  # '####' with no number after it
        ("#### -3", "-3", 1.0),
        ("10 - 3 = 7, so 10-3", "3", 1.0),  # a minus joining two numbers is no sign
        ("it is 1,234,567", "1234567", 1.0),
        ("3,4,5", "5", 1.0),  # a list, not a thousands-separated number
        ("#### .5", "0.5", 1.0),
        ("#### 12", 12, 1.0),  # a numeric column works too
    ],
)
def test_gsm8k_exact_match(completion: str, answer: str, reward: float) -> None:
    assert call(gsm8k_exact_match, [completion], answer=[answer], solution=["unused"]) == [reward]


def test_gsm8k_exact_match_scores_a_batch_and_checks_its_columns() -> None:
    completions = ["#### 1,234", "#### 12", "no number", "the answer is 42"]
    assert call(gsm8k_exact_match, completions, answer=["1234", "13", "0", "42"], extra=[1, 2, 3, 4]) == [
        1.0,
        0.0,
        0.0,
        1.0,
    ]
    assert extract_answer("nothing here") is None and extract_answer("x = -2.5 then 3") == 3.0
    with pytest.raises(FTLabError, match=r"gsm8k_exact_match needs an 'answer' column \(the batch has: solution\)"):
        call(gsm8k_exact_match, ["#### 1"], solution=["s"])
    with pytest.raises(FTLabError, match=r"the 'answer' column value 'many' is not a number"):
        call(gsm8k_exact_match, ["#### 1"], answer=["many"])
    with pytest.raises(ValueError, match=r"column 'answer' has 1 values for 2 completions"):
        call(gsm8k_exact_match, ["#### 1", "#### 2"], answer=["1"])


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        ("so the answer is #### 1,234", 1.0),
        ("#### 7", 1.0),
        ("####-3.5", 1.0),
        ("The answer is 7.", 0.0),
        ("#### $5", 0.0),
        ("#### five", 0.0),
        ("####\n5", 0.0),
        ("", 0.0),
    ],
)
def test_gsm8k_format(completion: str, reward: float) -> None:
    assert call(gsm8k_format, [completion], answer=["1"]) == [reward]


def test_token_share() -> None:
    share = TokenShare(token_id=5)
    ids = [[5, 7, 5, 5], [], [7, 8], [5], (5, 9)]
    assert call(share, ["a", "", "b", "c", "d"], ids, answer=["x"] * 5) == [0.75, 0.0, 0.0, 1.0, 0.5]
    assert share.__name__ == "token_share" and repr(share) == "TokenShare(token_id=5)"
    for bad in (-1, "5", True):
        with pytest.raises(FTLabError, match="TokenShare token_id must be a non-negative token id"):
            TokenShare(token_id=bad)


def test_rewards_are_named_in_config_by_import_path_or_class_path() -> None:
    parser = ArgumentParser()
    parser.add_argument("--rewards", type=list[Callable])
    config = parser.parse_object(
        {
            "rewards": [
                "ftlab.rewards.gsm8k.gsm8k_exact_match",
                {"class_path": "ftlab.rewards.token_rules.TokenShare", "init_args": {"token_id": 5}},
            ]
        }
    )
    exact, share = parser.instantiate(config).rewards
    assert exact is gsm8k_exact_match
    assert isinstance(share, TokenShare) and share.token_id == 5


@pytest.mark.parametrize("module", [ftlab.rewards.gsm8k, ftlab.rewards.token_rules])
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
