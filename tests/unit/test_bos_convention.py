"""Raw text and prompts begin the same way: with the tokenizer's BOS."""

from __future__ import annotations

from pathlib import Path

from ftlab.data.text import TextDataModule
from tests.conftest import write_jsonl


def test_raw_text_documents_and_prompts_both_start_with_bos(tokenizer, tmp_path: Path) -> None:
    from ftlab.data import PromptDataModule

    assert tokenizer.bos_token_id is not None
    text = tmp_path / "docs.jsonl"
    write_jsonl(text, [{"text": "first document"}, {"text": "second one"}])
    stream = TextDataModule(train=str(text), max_length=64)
    stream.tokenizer = tokenizer
    stream.setup("fit")
    ids = stream.train_set[0].input_ids
    first = tokenizer("first document", add_special_tokens=False)["input_ids"]
    second = tokenizer("second one", add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert ids == [bos, *first, eos, bos, *second, eos]

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": "first document"}])
    dm = PromptDataModule(train=str(prompts), batch_size=1, max_length=64)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    batch = dm.collate(dm.train_set)
    real = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    assert real[0] == bos
