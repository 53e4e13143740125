"""SFTDataModule: reading files, truncation and dropping with counts, packing, splits, bad input."""

import gzip
import json
from pathlib import Path

import pytest
import torch

from ftlab.data import SFTDataModule
from ftlab.data.chat import IGNORE
from ftlab.errors import FTLabError
from tests.conftest import write_jsonl


def make(tokenizer, train, **kwargs) -> SFTDataModule:
    dm = SFTDataModule(train=str(train), **kwargs)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    return dm


def test_batches_mask_prompt_and_padding(tokenizer, sft_file: Path) -> None:
    dm = make(tokenizer, sft_file, batch_size=4, val_fraction=0.25)
    assert dm.stats["rows"] == 24 and dm.stats["val_examples"] == 6 and dm.stats["train_examples"] == 18
    batch = dm.collate(dm.train_set[:4])
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape
    pad = batch.attention_mask == 0
    assert (batch.labels[pad] == IGNORE).all() and (batch.input_ids[pad] == tokenizer.pad_token_id).all()
    assert batch.num_tokens == int(batch.attention_mask.sum())
    assert batch.num_loss_tokens == int((batch.labels != IGNORE).sum()) > 0
    for row in range(4):
        answer = batch.input_ids[row][batch.labels[row] != IGNORE]
        assert tokenizer.decode(answer).startswith("word ") and answer[-1] == tokenizer.eos_token_id


def test_validation_split_is_seeded_and_disjoint(tokenizer, sft_file: Path) -> None:
    a = make(tokenizer, sft_file, val_fraction=0.25, seed=1)
    b = make(tokenizer, sft_file, val_fraction=0.25, seed=1)
    assert [e.input_ids for e in a.val_set] == [e.input_ids for e in b.val_set]
    train_ids = {tuple(e.input_ids) for e in a.train_set}
    assert not any(tuple(e.input_ids) in train_ids for e in a.val_set)


def test_selection_split_leaves_validation_alone_and_can_be_evaluated_on(tokenizer, sft_file: Path) -> None:
    plain = make(tokenizer, sft_file, val_fraction=0.25)
    tuned = make(tokenizer, sft_file, val_fraction=0.25, selection_fraction=0.25)
    scored = make(tokenizer, sft_file, val_fraction=0.25, selection_fraction=0.25, evaluate_on="selection")
    ids = lambda examples: [tuple(e.input_ids) for e in examples]  # noqa: E731
    assert ids(tuned.val_set) == ids(plain.val_set)  # the reported split is the same with or without selection
    # 24 rows: 6 validation, then a quarter of the 18 left (round(4.5) = 4) for selection, 14 to train
    assert (len(tuned.selection_set), len(tuned.train_set)) == (4, 14) and tuned.stats["selection_examples"] == 4
    assert set(ids(tuned.selection_set)) | set(ids(tuned.train_set)) == set(ids(plain.train_set))
    assert not set(ids(tuned.selection_set)) & (set(ids(tuned.train_set)) | set(ids(tuned.val_set)))
    assert ids(scored.val_set) == ids(tuned.selection_set) and ids(scored.train_set) == ids(tuned.train_set)
    with pytest.raises(FTLabError, match=r"data evaluate_on=selection needs a selection split"):
        make(tokenizer, sft_file, evaluate_on="selection")
    with pytest.raises(FTLabError, match=r"data evaluate_on must be val or selection, got 'test'"):
        make(tokenizer, sft_file, selection_fraction=0.1, evaluate_on="test")


def test_truncation_and_dropping_are_counted(tokenizer, tmp_path: Path) -> None:
    rows = [
        {"instruction": "short", "output": "ok"},
        {"instruction": "short", "output": "a long answer " * 40},
        {"instruction": "a very long prompt " * 40, "output": "never seen"},
    ]
    dm = make(tokenizer, write_jsonl(tmp_path / "t.jsonl", rows), max_length=32)
    assert dm.stats == {"rows": 3, "truncated": 1, "dropped_prompt_too_long": 1, "train_examples": 2, "val_examples": 0}
    assert all(len(e.input_ids) <= 32 for e in dm.train_set)


def test_every_row_too_long_is_one_clear_error(tokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"instruction": "long prompt " * 50, "output": "x"}] * 3)
    with pytest.raises(FTLabError, match=r"t.jsonl has no usable row left .*dropped_prompt_too_long=3.*max_length=16"):
        make(tokenizer, path, max_length=16)


def test_packing_restarts_positions_and_never_predicts_across_examples(tokenizer, sft_file: Path) -> None:
    dm = make(tokenizer, sft_file, packing=True, max_length=128, batch_size=2)
    assert dm.stats["packed_rows_train"] < 24
    ex = dm.train_set[0]
    starts = [i for i, p in enumerate(ex.position_ids) if p == 0]
    assert len(starts) > 1 and all(ex.labels[i] == IGNORE for i in starts)
    assert all(len(e.input_ids) <= 128 for e in dm.train_set)
    batch = dm.collate(dm.train_set[:2])
    assert batch.attention_mask is None and batch.position_ids is not None


def test_packed_examples_do_not_attend_to_each_other(tiny_llama, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny_llama.load_model(AutoModelForCausalLM).eval()
    a, b = [1, 5, 6, 7], [1, 8, 9]
    with torch.no_grad():
        positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
        packed = model(input_ids=torch.tensor([a + b]), position_ids=positions, use_cache=False).logits
        alone = model(input_ids=torch.tensor([b]), use_cache=False).logits
    torch.testing.assert_close(packed[0, 4:], alone[0], rtol=1e-5, atol=1e-5)


def test_field_mapping_chat_rows_and_formats(tokenizer, tmp_path: Path) -> None:
    rows = [{"instruction": "q", "response": "r"}] * 3
    gz = tmp_path / "rows.json.gz"
    with gzip.open(gz, "wt") as f:
        json.dump(rows, f)
    assert make(tokenizer, gz, output_field="response").stats["rows"] == 3
    (tmp_path / "rows.csv").write_text("instruction,output\nq,r\nq2,r2\n")
    assert make(tokenizer, tmp_path / "rows.csv").stats["rows"] == 2
    chats = [{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}] * 2
    assert make(tokenizer, write_jsonl(tmp_path / "chat.jsonl", chats)).stats["rows"] == 2


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        (None, {}, r"data file .*missing.jsonl not found"),
        ("", {}, r"data file .*empty.jsonl has no rows"),
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', {}, r"bad.jsonl row 1 has no 'output' field"),
        ('{"prompt": "a", "answer": "b"}\n', {}, r"no 'instruction' column \(columns: prompt, answer\)"),
        ('{"instruction": "a", "output": "b"}\n', {"val_fraction": 1.5}, r"val_fraction must be in \[0, 1\)"),
    ],
)
def test_bad_input_names_file_row_or_key(tokenizer, tmp_path: Path, content, kwargs, message) -> None:
    name = {None: "missing.jsonl", "": "empty.jsonl"}.get(content, "bad.jsonl")
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(FTLabError, match=message):
        make(tokenizer, path, **kwargs)


def test_pad_to_multiple_of_buckets_batch_widths(tokenizer, sft_file: Path) -> None:
    plain = make(tokenizer, sft_file, max_length=64)
    bucketed = make(tokenizer, sft_file, max_length=64, pad_to_multiple_of=16)
    for start in range(0, 8, 2):
        rows = plain.train_set[start : start + 2]
        a, b = plain.collate(rows), bucketed.collate(rows)
        longest = a.input_ids.shape[1]
        assert b.input_ids.shape[1] == min(-(-longest // 16) * 16, 64)
        assert torch.equal(b.input_ids[:, :longest], a.input_ids) and (b.labels[:, longest:] == IGNORE).all()
        assert b.num_tokens == a.num_tokens
