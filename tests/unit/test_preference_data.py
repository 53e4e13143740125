"""PreferenceDataModule and HHRLHFDataModule: batch layout, truncation, drops, chat pairs, HH-RLHF splits."""

import logging
from pathlib import Path

import pytest
import torch

from ftlab.data.chat import IGNORE
from ftlab.data.hh_rlhf import HHRLHFDataModule, split_pair, transcript_messages
from ftlab.data.preference import PreferenceDataModule
from ftlab.errors import FTLabError
from tests.conftest import REPO, write_jsonl

HH_TEST = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def make(tokenizer, train, cls: type = PreferenceDataModule, **kwargs) -> PreferenceDataModule:
    dm = cls(train=str(train), **kwargs)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    return dm


def answer(batch, row: int) -> torch.Tensor:
    return batch.input_ids[row][batch.labels[row] != IGNORE]


def prompt(batch, row: int) -> torch.Tensor:
    start = int((batch.labels[row] != IGNORE).nonzero()[0])
    return batch.input_ids[row, :start]


def test_batch_stacks_chosen_then_rejected_with_labels_on_answers_only(tokenizer, tmp_path: Path) -> None:
    rows = [{"prompt": f"Question {i}" + " and more" * i, "chosen": f"good {i}", "rejected": "bad"} for i in range(6)]
    dm = make(tokenizer, write_jsonl(tmp_path / "p.jsonl", rows), batch_size=3)
    assert dm.stats == {"rows": 6, "train_examples": 6, "val_examples": 0}
    batch = dm.collate(dm.train_set[1:4])
    assert len(batch) == 3 and batch.index.tolist() == [1, 2, 3]
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape == (6, batch.input_ids.shape[1])
    pad = batch.attention_mask == 0
    assert pad.any() and (batch.labels[pad] == IGNORE).all() and (batch.input_ids[pad] == tokenizer.pad_token_id).all()
    assert (batch.attention_mask[:, 0] == 1).all() and batch.num_tokens == int(batch.attention_mask.sum())
    for i in range(3):
        assert torch.equal(prompt(batch, i), prompt(batch, 3 + i))  # the same prompt tokens in both halves
        assert prompt(batch, i)[0] == tokenizer.bos_token_id
        assert tokenizer.decode(prompt(batch, i)).endswith(f"Question {i + 1}{' and more' * (i + 1)}\n<|assistant|>\n")
        assert tokenizer.decode(answer(batch, i)) == f"good {i + 1}</s>"
        assert tokenizer.decode(answer(batch, 3 + i)) == "bad</s>"
        for row in (i, 3 + i):
            n = int(batch.attention_mask[row].sum())
            assert batch.labels[row, n - 1] == tokenizer.eos_token_id  # the answer is the row's end
            assert torch.equal(batch.labels[row, :n][batch.labels[row, :n] != IGNORE], answer(batch, row))


def test_prompts_are_cut_from_the_left_and_answers_from_the_right(tokenizer, tmp_path: Path) -> None:
    rows = [
        {"prompt": "filler words " * 30 + "the real question", "chosen": "yes", "rejected": "no"},
        {"prompt": "short", "chosen": "a long answer " * 30, "rejected": "no"},
        {"prompt": "short", "chosen": "fine", "rejected": "also fine"},
    ]
    dm = make(tokenizer, write_jsonl(tmp_path / "t.jsonl", rows), max_length=64, max_prompt_length=28)
    assert dm.stats == {"rows": 3, "truncated_prompt": 1, "truncated_answer": 1, "train_examples": 3, "val_examples": 0}
    cut, long, whole = dm.train_set
    assert len(cut.prompt_ids) == 28 and cut.prompt_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(cut.prompt_ids).endswith("the real question\n<|assistant|>\n")
    assert tokenizer.decode(cut.chosen_ids) == "yes</s>"
    assert len(long.prompt_ids) + len(long.chosen_ids) == 64 and long.chosen_ids[-1] != tokenizer.eos_token_id
    assert tokenizer.decode(long.chosen_ids).startswith("a long answer a long")
    assert tokenizer.decode(long.rejected_ids) == "no</s>"  # only the answer that is too long loses its end
    assert tokenizer.decode(whole.prompt_ids[1:]) == "<|user|>\nshort\n<|assistant|>\n"
    batch = dm.collate(dm.train_set)
    assert batch.input_ids.shape[1] == 64


def test_empty_and_identical_answers_drop_their_pair(tokenizer, tmp_path: Path, caplog) -> None:
    rows = [
        {"prompt": "a", "chosen": "x", "rejected": "y"},
        {"prompt": "b", "chosen": "  ", "rejected": "y"},
        {"prompt": "c", "chosen": "same", "rejected": "same "},
        {"prompt": "d", "chosen": "x", "rejected": ""},
        {"prompt": "e", "chosen": "same", "rejected": "same"},
    ]
    with caplog.at_level(logging.WARNING, logger="ftlab"):
        dm = make(tokenizer, write_jsonl(tmp_path / "d.jsonl", rows))
    assert dm.stats == {
        "rows": 5,
        "dropped_empty_answer": 2,
        "dropped_identical": 2,
        "train_examples": 1,
        "val_examples": 0,
    }
    assert "dropped 2 pairs with identical answers (first: row 2)" in caplog.text
    assert "dropped 2 pairs with an empty chosen or rejected answer (first: row 1)" in caplog.text
    assert dm.train_set[0].row == 0
    with pytest.raises(FTLabError, match=r"e.jsonl has no usable row left .*dropped_identical=1"):
        make(tokenizer, write_jsonl(tmp_path / "e.jsonl", rows[4:]))


def test_chat_pairs_label_only_the_final_answer(tokenizer, tmp_path: Path) -> None:
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"},
    ]
    rows = [
        {
            "prompt": turns,
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        },
        {
            "prompt": turns[:1],
            "chosen": [{"role": "assistant", "content": "hey"}],
            "rejected": [{"role": "assistant", "content": "go"}],
        },
    ]
    dm = make(tokenizer, write_jsonl(tmp_path / "c.jsonl", rows), system_prompt="be kind", batch_size=2)
    batch = dm.collate(dm.train_set)
    assert [tokenizer.decode(answer(batch, r)) for r in range(4)] == ["4</s>", "hey</s>", "5</s>", "go</s>"]
    expected = "<s><|system|>\nbe kind\n<|user|>\nhi\n<|assistant|>\nhello</s><|user|>\n2+2?\n<|assistant|>\n"
    assert tokenizer.decode(prompt(batch, 0)) == expected  # the earlier assistant turn carries no label
    strings = [{"prompt": "hi", "chosen": "hey", "rejected": "go"}]
    plain = make(tokenizer, write_jsonl(tmp_path / "s.jsonl", strings), system_prompt="be kind")
    assert plain.train_set[0].prompt_ids == dm.train_set[1].prompt_ids  # a string prompt is one user turn


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}],
            r"x.jsonl row 1 has no 'rejected' field",
        ),
        ([{"question": "a", "chosen": "b", "rejected": "c"}], r"x.jsonl has no 'prompt' column \(columns: question"),
        (
            [
                {
                    "prompt": "a",
                    "chosen": [{"role": "user", "content": "b"}],
                    "rejected": [{"role": "assistant", "content": "c"}],
                }
            ],
            r"x.jsonl row 0 'chosen' must be a string or a list holding exactly one assistant message",
        ),
        (
            [{"prompt": [{"role": "user"}], "chosen": "b", "rejected": "c"}],
            r"x.jsonl row 0 'prompt' message 0 needs string",
        ),
    ],
)
def test_bad_rows_name_file_row_and_key(tokenizer, tmp_path: Path, rows, message) -> None:
    with pytest.raises(FTLabError, match=message):
        make(tokenizer, write_jsonl(tmp_path / "x.jsonl", rows))


def test_max_prompt_length_must_leave_room_for_answers(tmp_path: Path) -> None:
    with pytest.raises(FTLabError, match=r"max_prompt_length must be at least 1 and below max_length=64"):
        PreferenceDataModule(train=str(tmp_path / "x.jsonl"), max_length=64, max_prompt_length=64)
    assert PreferenceDataModule(train="x.jsonl", max_length=64).max_prompt_length == 32


def test_hh_split_uses_the_common_prefix_not_the_chosen_markers() -> None:
    chosen = "\n\nHuman: Hi  \n\nAssistant: Hello.\n\nHuman: Why?\n\nAssistant: Because.\n\nAssistant: Also this."
    rejected = "\n\nHuman: Hi  \n\nAssistant: Hello.\n\nHuman: Why?\n\nAssistant: Because I said so."
    prompt_text, good, bad = split_pair(chosen, rejected)
    assert prompt_text.endswith("Why?\n\nAssistant:")  # not cut at the chosen reply's own marker
    assert (good, bad) == (" Because.\n\nAssistant: Also this.", " Because I said so.")
    messages, merged = transcript_messages(prompt_text, "row 0")
    assert merged == 0 and messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Why?"},
    ]
    messages, merged = transcript_messages(
        "\n\nHuman: a\n\nAssistant: b\n\nAssistant: c\n\nHuman: d\n\nAssistant:", "r"
    )
    assert merged == 1 and [m["content"] for m in messages] == ["a", "b\n\nc", "d"]
    assert split_pair("\n\nHuman: a", "\n\nHuman: b") is None
    with pytest.raises(FTLabError, match="row 3: the transcript does not start"):
        transcript_messages("Hello\n\nHuman: a\n\nAssistant:", "row 3")


def test_hh_datamodule_on_hand_written_transcripts(tokenizer, tmp_path: Path) -> None:
    rows = [
        {
            "chosen": "\n\nHuman: Hi\n\nAssistant: Sure.\n\nAssistant: More.",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Su no.",
        },
        {"chosen": "\n\nHuman: Hi\n\nAssistant: ", "rejected": "\n\nHuman: Hi\n\nAssistant: Something."},
    ]
    dm = make(tokenizer, write_jsonl(tmp_path / "hh.jsonl", rows), cls=HHRLHFDataModule)
    assert dm.stats == {"rows": 2, "dropped_empty_answer": 1, "train_examples": 1, "val_examples": 0}
    batch = dm.collate(dm.train_set)
    assert tokenizer.decode(prompt(batch, 0)) == "<s><|user|>\nHi\n<|assistant|>\n"
    assert tokenizer.decode(answer(batch, 0)) == "Sure.\n\nAssistant: More.</s>"
    assert tokenizer.decode(answer(batch, 1)) == "Su no.</s>"
    with pytest.raises(FTLabError, match=r"bad.jsonl row 0: 'chosen' and 'rejected' share no"):
        make(tokenizer, write_jsonl(tmp_path / "bad.jsonl", [{"chosen": "a", "rejected": "b"}]), cls=HHRLHFDataModule)


def test_bundled_example_pairs(tokenizer) -> None:
    dm = make(tokenizer, REPO / "ftlab/assets/preference_pairs.jsonl", val_fraction=0.1, max_length=128)
    assert dm.stats == {"rows": 40, "train_examples": 36, "val_examples": 4}


@pytest.mark.skipif(not HH_TEST.is_file(), reason="the shared offline data folder is not beside this checkout")
def test_hh_rlhf_harmless_base_test_counts(tokenizer) -> None:
    dm = make(tokenizer, HH_TEST, cls=HHRLHFDataModule, max_length=512, max_prompt_length=256, val_fraction=0.1334)
    assert dm.stats["rows"] == 2312 and dm.stats["dropped_empty_answer"] == 4 and "dropped_identical" not in dm.stats
    assert dm.stats["merged_turns"] == 4
    assert (dm.stats["train_examples"], dm.stats["val_examples"]) == (2000, 308)
    kept = {ex.row for ex in dm.train_set + dm.val_set}
    assert len(kept) == 2308 and set(range(2312)) - kept == {86, 516, 925, 1103}
