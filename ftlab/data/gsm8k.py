"""GSM8K in its distributed layout, as prompts for RL with a verifiable reward (GRPO, PPO).

Dataset (Cobbe et al., 2021, "Training Verifiers to Solve Math Word Problems";
github.com/openai/grade-school-math): a row holds `question` and `answer`, a worked solution with
calculator annotations `<<16-3-4=9>>` whose last line is `#### <final answer>`. Here the prompt is the
question followed by `instruction_suffix` (by default a line asking for the final answer after '####', the
format the reward `ftlab.rewards.gsm8k.gsm8k_exact_match` reads first), and the row's columns become
`answer`: the final answer's number string (the text after the last '####', commas removed, e.g. "1234"),
and `solution`: the whole worked solution with the annotations stripped (its '####' line kept), for
reference or as an SFT target. A solution without '####', or whose final answer is not a number, is an
error naming file and row.
"""

from __future__ import annotations

import re
from typing import Any

from ftlab.data.chat import Messages
from ftlab.data.prompts import PromptDataModule
from ftlab.errors import FTLabError

ANNOTATION = re.compile(r"<<[^>]*>>")
NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)")
DEFAULT_SUFFIX = "\nGive the final answer after '####'."


def final_answer(solution: str, where: str) -> str:
    """The number after a solution's last '####', commas and surrounding spaces removed."""
    if "####" not in solution:
        raise FTLabError(f"{where}: the solution has no '####' line with the final answer")
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not NUMBER.fullmatch(answer):
        raise FTLabError(f"{where}: the final answer after '####' is not a number: {answer!r}")
    return answer


def strip_annotations(solution: str) -> str:
    """The solution without its calculator annotations: "16 - 3 - 4 = <<16-3-4=9>>9" -> "16 - 3 - 4 = 9"."""
    return ANNOTATION.sub("", solution)


class GSM8KDataModule(PromptDataModule):
    """GSM8K files as distributed (`question`, `answer` with a final '#### <number>' line; jsonl or jsonl.gz).

    Args:
        prompt_field: Column holding the question.
        answer_field: Column holding the worked solution.
        instruction_suffix: Text appended to every question (None or "" for the bare question).
        **kwargs: See PromptDataModule.
    """

    def __init__(
        self,
        *args,
        prompt_field: str = "question",
        answer_field: str = "answer",
        instruction_suffix: str | None = DEFAULT_SUFFIX,
        **kwargs,
    ) -> None:
        super().__init__(*args, prompt_field=prompt_field, **kwargs)
        self.answer_field = answer_field
        self.instruction_suffix = instruction_suffix or ""

    def fields(self) -> list[str]:
        return [self.prompt_field, self.answer_field]

    def prompt(self, row: dict[str, Any], where: str) -> str | Messages:
        question = super().prompt(row, where)
        if not isinstance(question, str):
            raise FTLabError(f"{where} '{self.prompt_field}' must be a question string")
        return question + self.instruction_suffix

    def columns(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        solution = row.get(self.answer_field)
        if not isinstance(solution, str):
            raise FTLabError(f"{where} has no '{self.answer_field}' solution string")
        columns = {k: v for k, v in super().columns(row, where).items() if k != self.answer_field}
        return {**columns, "answer": final_answer(solution, where), "solution": strip_annotations(solution)}
