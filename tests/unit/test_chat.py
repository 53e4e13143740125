"""Rendering rows through the chat template: where the loss goes."""

import copy

import pytest

from ftlab.data.chat import IGNORE, chat_messages, instruction_messages, render_segments, tokenize_segments
from ftlab.errors import FTLabError


def test_default_template_puts_loss_on_answer_and_eos(tokenizer) -> None:
    messages = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]
    segments = render_segments(tokenizer, messages, "row 0")
    assert segments == [("<|user|>\nhi there\n<|assistant|>\n", False), ("hello</s>", True)]
    ids, labels = tokenize_segments(tokenizer, segments)
    assert ids[0] == tokenizer.bos_token_id and labels[0] == IGNORE
    answer = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert tokenizer.decode(answer) == "hello</s>"
    assert answer[-1] == tokenizer.eos_token_id
    prompt_ids = tokenizer(segments[0][0], add_special_tokens=False)["input_ids"]
    assert ids[1 : 1 + len(prompt_ids)] == prompt_ids  # the prompt is tokenized as at generation time


def test_multi_turn_chat_trains_every_assistant_turn(tokenizer) -> None:
    messages = chat_messages(
        {
            "messages": [
                {"role": "system", "content": "be kind"},
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d"},
            ]
        },
        "row 0",
        "messages",
    )
    segments = render_segments(tokenizer, messages, "row 0")
    assert [text for text, loss in segments if loss] == ["b</s>", "d</s>"]
    assert "".join(text for text, _ in segments) == tokenizer.apply_chat_template(messages, tokenize=False)


def test_loss_on_prompt_labels_everything_but_bos(tokenizer) -> None:
    segments = [("<|user|>\nx\n<|assistant|>\n", False), ("y</s>", True)]
    ids, labels = tokenize_segments(tokenizer, segments, loss_on_prompt=True)
    assert labels[0] == IGNORE and labels[1:] == ids[1:]


def test_instruction_row_joins_input_and_names_missing_field() -> None:
    row = {"instruction": "Add", "input": "1 and 2", "output": "3"}
    messages = instruction_messages(row, "f row 4", "instruction", "input", "output", system="sys")
    assert messages == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "Add\n\n1 and 2"},
        {"role": "assistant", "content": "3"},
    ]
    assert instruction_messages({**row, "output": "  "}, "f row 4", "instruction", "input", "output", None) is None
    with pytest.raises(FTLabError, match=r"f row 4 has no 'output' field \(it has: instruction, input\)"):
        instruction_messages(
            {"instruction": "Add", "input": "x", "output": None}, "f row 4", "instruction", "input", "output", None
        )


def test_chat_rows_are_checked(tokenizer) -> None:
    with pytest.raises(FTLabError, match="row 2 has no assistant message"):
        chat_messages({"messages": [{"role": "user", "content": "a"}]}, "row 2", "messages")
    with pytest.raises(FTLabError, match="row 3 message 0 needs string 'role' and 'content'"):
        chat_messages({"messages": [{"role": "user"}]}, "row 3", "messages")


def test_template_that_rewrites_history_is_refused(tokenizer) -> None:
    original = tokenizer.chat_template
    # Renders only the last message: earlier turns vanish, so turn-by-turn rendering is not a prefix.
    tokenizer.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    try:
        messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        with pytest.raises(FTLabError, match="row 7: the chat template does not render turn by turn"):
            render_segments(tokenizer, messages, "row 7")
    finally:
        tokenizer.chat_template = original


CHATML = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def test_the_answer_ends_at_its_eos_not_at_the_newline_the_template_writes_after_it(tokenizer) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHATML  # like ChatML: "<|im_end|>\\n" closes every turn
    messages = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]
    segments = render_segments(tok, messages, "row 0")
    assert segments == [("<|user|>\nhi there</s>\n<|assistant|>\n", False), ("hello</s>", True), ("\n", False)]
    ids, labels = tokenize_segments(tok, segments)
    learned = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert learned == tok("hello", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert (
        ids[-len(tok("\n", add_special_tokens=False)["input_ids"]) :]
        == tok("\n", add_special_tokens=False)["input_ids"]
    )
    assert labels[-1] == IGNORE  # the newline after the EOS


def test_an_input_field_is_stripped() -> None:
    row = {"instruction": "Sum", "input": "  1 2 \n", "output": "3"}
    messages = instruction_messages(row, "row 0", "instruction", "input", "output", None)
    assert messages[0]["content"] == "Sum\n\n1 2"
    blank = instruction_messages({**row, "input": "  "}, "row 0", "instruction", "input", "output", None)
    assert blank[0]["content"] == "Sum"
