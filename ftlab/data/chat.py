"""Turning rows into token ids and loss labels through the tokenizer's chat template.

An instruction row (instruction, optional input, output) becomes a user turn and an assistant
turn; a chat row is its list of messages. The template is rendered turn by turn: the text an
assistant turn adds (its content and end-of-turn marker) carries the loss, everything else
(system, user, the template's role headers) does not. Each piece is tokenized on its own, exactly
as a prompt is at generation time.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from ftlab.errors import FTLabError

IGNORE = -100
Messages = list[dict[str, str]]


def instruction_messages(
    row: dict[str, Any], where: str, instruction: str, input: str | None, output: str, system: str | None
) -> Messages | None:
    """Messages of an instruction row; None when its answer is empty (dropped and counted)."""
    for key in (instruction, output):
        if row.get(key) is None:
            present = ", ".join(k for k, v in row.items() if v is not None)
            raise FTLabError(f"{where} has no '{key}' field (it has: {present})")
    prompt = str(row[instruction])
    extra = row.get(input) if input else None
    if extra:
        prompt = f"{prompt}\n\n{extra}"
    if not str(row[output]).strip():
        return None
    messages = [{"role": "system", "content": system}] if system else []
    return [
        *messages,
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": str(row[output])},
    ]


def chat_messages(row: dict[str, Any], where: str, field: str) -> Messages:
    messages = row.get(field)
    if not isinstance(messages, list) or not messages:
        raise FTLabError(f"{where} has no list of messages in '{field}'")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise FTLabError(f"{where} message {i} needs string 'role' and 'content' keys")
    if not any(m["role"] == "assistant" for m in messages):
        raise FTLabError(f"{where} has no assistant message to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _render(tok: PreTrainedTokenizerBase, messages: Messages, generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def render_segments(tok: PreTrainedTokenizerBase, messages: Messages, where: str) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, carries_loss) pieces."""
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tok, messages[:i], generation_prompt=True)
        full = _render(tok, messages[: i + 1], generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise FTLabError(
                f"{where}: the chat template does not render turn by turn as a prefix "
                "(it rewrites earlier turns), so answer tokens cannot be located"
            )
        segments += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    rest = _render(tok, messages, generation_prompt=False)
    if rest.startswith(done) and len(rest) > len(done):
        segments.append((rest[len(done) :], False))
    return [(text, loss) for text, loss in segments if text]


def tokenize_segments(
    tok: PreTrainedTokenizerBase, segments: list[tuple[str, bool]], loss_on_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 where no loss) of the pieces, with BOS first if the model uses one."""
    ids: list[int] = []
    labels: list[int] = []
    bos = tok.bos_token
    if bos is not None and tok.bos_token_id is not None and not (segments and segments[0][0].startswith(bos)):
        ids.append(tok.bos_token_id)
        labels.append(IGNORE)
    for text, loss in segments:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if (loss or loss_on_prompt) else [IGNORE] * len(piece)
    return ids, labels
