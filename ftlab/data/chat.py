"""Turning rows into token ids and loss labels through the tokenizer's chat template.

An instruction row (instruction, optional input, output) becomes a user turn and an assistant
turn; a chat row is its list of messages. The template is rendered turn by turn: the text an
assistant turn adds (its content and end-of-turn marker, up to the last EOS token of the turn) carries the
loss, everything else (system, user, the template's role headers, what a template writes after the EOS) does
not. An instruction row's `input` is stripped of surrounding whitespace (and left out when blank). Each piece
is tokenized on its own, exactly as a prompt is at generation time.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from ftlab.data.fields import text_value
from ftlab.errors import FTLabError

IGNORE = -100
Messages = list[dict[str, str]]


def instruction_messages(
    row: dict[str, Any], where: str, instruction: str, input: str | None, output: str, system: str | None
) -> Messages | None:
    """Messages of an instruction row; None when its answer is empty (dropped and counted). Each field must be
    text; a number is written as text (a bare numeric answer), a list, dict or bool is refused."""
    for key in (instruction, output):
        if row.get(key) is None:
            present = ", ".join(k for k, v in row.items() if v is not None)
            raise FTLabError(f"{where} has no '{key}' field (it has: {present})")
    prompt = text_value(row[instruction], where, instruction, numbers=True)
    extra = text_value(row[input], where, input, numbers=True) if input and row.get(input) is not None else None
    if extra and extra.strip():
        prompt = f"{prompt}\n\n{extra.strip()}"
    answer = text_value(row[output], where, output, numbers=True)
    if not answer.strip():
        return None
    messages = [{"role": "system", "content": system}] if system else []
    return [
        *messages,
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
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


def render(tok: PreTrainedTokenizerBase, messages: Messages, generation_prompt: bool, where: str = "") -> str:
    if not messages:
        return ""
    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as err:  # jinja2's TemplateError, or a template's raise_exception(): the template's fault
        name = getattr(tok, "name_or_path", "") or type(tok).__name__
        raise FTLabError(
            f"{where}: the chat template of tokenizer {name} fails: {type(err).__name__}: {err}".lstrip(": ")
        ) from None


def render_segments(tok: PreTrainedTokenizerBase, messages: Messages, where: str) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, carries_loss) pieces."""
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tok, messages[:i], generation_prompt=True, where=where)
        full = render(tok, messages[: i + 1], generation_prompt=False, where=where)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise FTLabError(
                f"{where}: the chat template does not render turn by turn as a prefix "
                "(it rewrites earlier turns), so answer tokens cannot be located"
            )
        answer = full[len(prompt) :]
        end = answer.rindex(tok.eos_token) + len(tok.eos_token) if tok.eos_token and tok.eos_token in answer else None
        # the answer ends at its EOS: what a template writes after it (e.g. "\n" after "<|im_end|>") is not learned
        segments += [(prompt[len(done) :], False), (answer[:end], True), (answer[end:] if end else "", False)]
        done = full
    rest = render(tok, messages, generation_prompt=False, where=where)
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
