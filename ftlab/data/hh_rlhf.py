"""Anthropic HH-RLHF in its raw layout: two whole transcripts per row, the prompt split off by their common prefix.

Dataset convention (Bai et al., 2022, "Training a Helpful and Harmless Assistant with Reinforcement
Learning from Human Feedback"; github.com/anthropics/hh-rlhf): a row holds `chosen` and `rejected`,
two conversations "\\n\\nHuman: …\\n\\nAssistant: …" that share every turn but the last assistant
reply; there is no prompt field. The prompt here is the longest common prefix of the two transcripts,
cut back to just after the last "\\n\\nAssistant:" it contains; the rest of each string is its answer.
The split in the DPO authors' code and TRL's early DPO example (`extract_anthropic_prompt`: the chosen
transcript up to its own last "\\n\\nAssistant:") gives a wrong prompt when the chosen reply itself
contains that marker (4 rows of harmless-base test: 1254, 1688, 1952, 2036).

How the code differs from feeding the transcript as text (what the paper's models saw): the prompt is
parsed into chat messages ("Human:" -> user, "Assistant:" -> assistant, separators and surrounding
spaces stripped) and rendered with the tokenizer's chat template, and each answer becomes one stripped
assistant message, so the model learns in its own chat format. Consecutive turns of one speaker (4 rows
of harmless-base test hold two Assistant turns in a row) are joined with a blank line, because many
chat templates demand alternating roles; such rows are counted as merged_turns. Answers that are empty
once stripped (4 chosen answers of harmless-base test: rows 86, 516, 925, 1103) drop their pair.
"""

from __future__ import annotations

import re
from typing import Any

from ftlab.data.chat import Messages
from ftlab.data.preference import PreferenceDataModule, field
from ftlab.errors import FTLabError

ASSISTANT = "\n\nAssistant:"
TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
ROLES = {"Human": "user", "Assistant": "assistant"}


def split_pair(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt, chosen answer, rejected answer) of two transcripts; None when they share no Assistant turn."""
    shorter = min(len(chosen), len(rejected))
    same = next((i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b), shorter)
    cut = chosen.rfind(ASSISTANT, 0, same)  # the last marker inside the common prefix
    if cut < 0:
        return None
    end = cut + len(ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def transcript_messages(prompt: str, where: str) -> tuple[Messages, int]:
    """Chat messages of a prompt transcript ending in "\\n\\nAssistant:", and how many turns were merged."""
    parts = TURN.split(prompt)  # ["", "Human", " text", "Assistant", " text", ..., "Assistant", ""]
    if parts[0].strip():
        raise FTLabError(f"{where}: the transcript does not start with a 'Human:' or 'Assistant:' turn")
    messages: Messages = []
    merged = 0
    for speaker, text in zip(parts[1:-2:2], parts[2:-2:2], strict=True):  # the final "Assistant:" is the cue
        role, content = ROLES[speaker], text.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
            merged += 1
        else:
            messages.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in messages):
        raise FTLabError(f"{where}: the prompt has no 'Human:' turn before the answers")
    return messages, merged


class HHRLHFDataModule(PreferenceDataModule):
    """Anthropic HH-RLHF files as distributed (`chosen` and `rejected` transcripts, jsonl.gz).

    Args:
        **kwargs: See PreferenceDataModule; `chosen_field` and `rejected_field` name the two
            transcript columns, `prompt_field` is not used (the prompt comes from the transcripts).
    """

    def fields(self) -> list[str]:
        return [self.chosen_field, self.rejected_field]

    def pair(self, row: dict[str, Any], where: str) -> tuple[Messages, str, str]:
        chosen, rejected = (field(row, key, where) for key in (self.chosen_field, self.rejected_field))
        for key, value in ((self.chosen_field, chosen), (self.rejected_field, rejected)):
            if not isinstance(value, str):
                raise FTLabError(f"{where} '{key}' must be a transcript string, got {type(value).__name__}")
        split = split_pair(chosen, rejected)
        if split is None:
            raise FTLabError(
                f"{where}: '{self.chosen_field}' and '{self.rejected_field}' share no '\\n\\nAssistant:' turn, "
                "so no prompt can be split off"
            )
        prompt, chosen_answer, rejected_answer = split
        messages, merged = transcript_messages(prompt, where)
        if merged:
            self.count("merged_turns")
        return self.with_system(messages), chosen_answer.strip(), rejected_answer.strip()
