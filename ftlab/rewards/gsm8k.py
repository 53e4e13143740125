"""GSM8K's verifiable rewards: exact match of the final number, and a small format reward.

Reward functions in ftlab are plain callables named in YAML by import path, called once per batch of
completions as `fn(prompts, completions, completion_ids, **columns) -> list[float]`, where every argument is
a list aligned with the completions (a prompt's row columns repeated for each of its samples) and
`columns` holds the datamodule's columns (GSM8KDataModule gives `answer` and `solution`); columns a
function does not read are accepted and ignored.

Extraction follows the dataset's format (Cobbe et al., 2021) the way nanochat's GSM8K task does, with a
fallback: the answer is the first number after the completion's last '####'; without '####', the last
number anywhere in the completion (so "... which makes 18 dollars." counts). Commas are removed
("1,234" -> 1234) and numbers compare as numbers ("18" == "18.0"). A completion with '####' but no number
after it, or with no number at all, earns 0.0. A reference answer that is not a number is an error.
"""

from __future__ import annotations

import re
from typing import Any

from ftlab.errors import FTLabError

# a number: an optional minus sign (not one joining two numbers, as in "5-3"), digits with optional
# thousands commas ("1,234" but not "3,4,5", which is three numbers), an optional decimal part
_NUMBER = r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+|\d+|(?=\.\d))(?:\.\d+)?"
NUMBER = re.compile(_NUMBER)
FORMAT = re.compile(r"####[ \t]*" + _NUMBER)


def parse_number(text: str) -> float | None:
    """The value of a number string with its commas removed ("1,234" -> 1234.0); None if it is not one."""
    text = text.strip()
    return float(text.replace(",", "")) if NUMBER.fullmatch(text) else None


def extract_answer(completion: str) -> float | None:
    """The number a completion gives as its final answer (see the module docstring); None when it gives none."""
    if "####" in completion:
        found = NUMBER.search(completion.rsplit("####", 1)[1])
        return parse_number(found.group()) if found else None
    numbers = NUMBER.findall(completion)
    return parse_number(numbers[-1]) if numbers else None


def aligned(name: str, completions: list[str], **columns: list[Any]) -> None:
    """Check that every column has one value per completion (a mismatch is a bug in the caller)."""
    for key, values in columns.items():
        if len(values) != len(completions):
            raise ValueError(f"{name}: column '{key}' has {len(values)} values for {len(completions)} completions")


def gsm8k_exact_match(
    prompts: list[str], completions: list[str], completion_ids: list[list[int]], **columns: list[Any]
) -> list[float]:
    """1.0 where the completion's final number equals the row's `answer` column, else 0.0.

    >>> gsm8k_exact_match(["q"] * 3, ["so #### 1,234", "#### 12", "no idea"], [[]] * 3, answer=["1234", "13", "1"])
    [1.0, 0.0, 0.0]
    """
    if "answer" not in columns:
        raise FTLabError(f"gsm8k_exact_match needs an 'answer' column (the batch has: {', '.join(columns) or 'none'})")
    aligned("gsm8k_exact_match", completions, answer=columns["answer"])
    rewards: list[float] = []
    for completion, reference in zip(completions, columns["answer"], strict=True):
        expected = parse_number(str(reference))
        if expected is None:
            raise FTLabError(f"gsm8k_exact_match: the 'answer' column value {reference!r} is not a number")
        got = extract_answer(completion)
        rewards.append(1.0 if got is not None and got == expected else 0.0)
    return rewards


def gsm8k_format(
    prompts: list[str], completions: list[str], completion_ids: list[list[int]], **columns: list[Any]
) -> list[float]:
    """1.0 where the completion states a final answer in the dataset's format, '####' then a number, else 0.0.

    Spaces or tabs may sit between '####' and the number, which may hold commas and a decimal part
    ("#### 1,234", "####-3.5"); "#### $5" or "#### five" earn 0.0. It says nothing about correctness: give
    it a small weight beside gsm8k_exact_match, to teach the format early.

    >>> gsm8k_format(["q"] * 3, ["#### 1,234", "the answer is 5", "#### $5"], [[]] * 3)
    [1.0, 0.0, 0.0]
    """
    return [1.0 if FORMAT.search(completion) else 0.0 for completion in completions]
