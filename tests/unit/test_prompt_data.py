"""PromptDataModule and GSM8KDataModule: left padding, generation prompts, left cuts, columns, GSM8K parsing."""

import json
import logging
from pathlib import Path

import pytest
import torch

from ftlab.data.gsm8k import GSM8KDataModule, final_answer, strip_annotations
from ftlab.data.preference import PreferenceDataModule
from ftlab.data.prompts import PromptDataModule
from ftlab.errors import FTLabError
from tests.conftest import REPO, write_jsonl

GSM8K_TEST = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def make(tokenizer, train, cls: type = PromptDataModule, **kwargs) -> PromptDataModule:
    dm = cls(train=str(train) if isinstance(train, Path) else train, **kwargs)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    return dm


def test_batches_are_left_padded_and_end_with_the_generation_prompt(tokenizer, tmp_path: Path) -> None:
    rows = [{"prompt": f"Question {i}" + " and more" * i, "answer": str(i)} for i in range(5)]
    dm = make(tokenizer, write_jsonl(tmp_path / "p.jsonl", rows), batch_size=3)
    assert dm.stats == {"rows": 5, "train_examples": 5, "val_examples": 0}
    batch = dm.collate(dm.train_set[1:5])
    width = batch.input_ids.shape[1]
    assert len(batch) == 4 and batch.index.tolist() == [1, 2, 3, 4]
    assert batch.attention_mask.shape == (4, width) and width == len(dm.train_set[4].prompt_ids)
    assert (batch.attention_mask[:, -1] == 1).all() and batch.attention_mask[0, 0] == 0
    assert batch.num_tokens == int(batch.attention_mask.sum()) == sum(len(ex.prompt_ids) for ex in dm.train_set[1:5])
    assert batch.columns == {"answer": ["1", "2", "3", "4"]}
    for row in range(4):
        i = row + 1
        n = int(batch.attention_mask[row].sum())
        assert batch.attention_mask[row].tolist() == [0] * (width - n) + [1] * n
        assert (batch.input_ids[row, : width - n] == tokenizer.pad_token_id).all()
        assert batch.input_ids[row, width - n] == tokenizer.bos_token_id
        assert batch.prompts[row] == f"<|user|>\nQuestion {i}{' and more' * i}\n<|assistant|>\n"
        assert tokenizer.decode(batch.input_ids[row, width - n :]) == "<s>" + batch.prompts[row]


def test_prompt_tokens_match_preference_data_for_chat_prompts(tokenizer, tmp_path: Path) -> None:
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"},
    ]
    rows = [{"prompt": turns, "id": 0}, {"prompt": "hi", "id": 1}]
    dm = make(tokenizer, write_jsonl(tmp_path / "c.jsonl", rows), system_prompt="be kind")
    pairs = [{"prompt": r["prompt"], "chosen": "4", "rejected": "5"} for r in rows]
    pref = make(
        tokenizer, write_jsonl(tmp_path / "pairs.jsonl", pairs), cls=PreferenceDataModule, system_prompt="be kind"
    )
    for ex, pair in zip(dm.train_set, pref.train_set, strict=True):
        assert ex.prompt_ids == pair.prompt_ids  # the same prompt tokens as a DPO pair: turn by turn
    assert dm.train_set[0].text == (
        "<|system|>\nbe kind\n<|user|>\nhi\n<|assistant|>\nhello</s><|user|>\n2+2?\n<|assistant|>\n"
    )
    assert dm.collate(dm.train_set).columns == {"id": [0, 1]}


def test_raw_text_prompts_skip_the_template(tokenizer, tmp_path: Path) -> None:
    rows = [{"prompt": "Once upon a time", "label": "story"}]
    dm = make(tokenizer, write_jsonl(tmp_path / "r.jsonl", rows), chat_template=False)
    batch = dm.collate(dm.train_set)
    assert batch.prompts == ["Once upon a time"] and batch.columns == {"label": ["story"]}
    assert tokenizer.decode(batch.input_ids[0]) == "<s>Once upon a time"
    with pytest.raises(FTLabError, match="system_prompt needs chat_template: true"):
        PromptDataModule(train="x.jsonl", chat_template=False, system_prompt="be kind")
    chats = [{"prompt": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(FTLabError, match=r"m.jsonl row 0 'prompt' holds chat messages but chat_template is false"):
        make(tokenizer, write_jsonl(tmp_path / "m.jsonl", chats), chat_template=False)


def test_long_prompts_are_cut_from_the_left_keeping_bos(tokenizer, tmp_path: Path, caplog) -> None:
    rows = [{"prompt": "filler words " * 30 + "the real question"}, {"prompt": "short"}]
    with caplog.at_level(logging.WARNING, logger="ftlab"):
        dm = make(tokenizer, write_jsonl(tmp_path / "t.jsonl", rows), max_length=64, max_prompt_length=24)
    assert dm.stats == {"rows": 2, "truncated_prompt": 1, "train_examples": 2, "val_examples": 0}
    assert "cut 1 prompts from the left to max_prompt_length=24" in caplog.text
    cut, whole = dm.train_set
    assert len(cut.prompt_ids) == 24 and cut.prompt_ids[0] == tokenizer.bos_token_id
    assert cut.text.endswith("the real question\n<|assistant|>\n") and not cut.text.startswith("<|user|>")
    assert tokenizer.decode(cut.prompt_ids[1:]) == cut.text  # the text is what the model sees
    assert whole.text == "<|user|>\nshort\n<|assistant|>\n"
    assert dm.collate(dm.train_set).input_ids.shape == (2, 24)
    # max_length bounds prompts: it is max_prompt_length's default and its ceiling
    assert PromptDataModule(train="x.jsonl", max_length=64).max_prompt_length == 64
    with pytest.raises(FTLabError, match=r"max_prompt_length must be between 2 and max_length=64"):
        PromptDataModule(train="x.jsonl", max_length=64, max_prompt_length=65)


def test_columns_stay_aligned_after_shuffling_and_splitting(tokenizer, tmp_path: Path) -> None:
    rows = [{"prompt": f"Question {i}", "answer": str(7 * i), "meta": {"n": i}} for i in range(30)]
    dm = make(tokenizer, write_jsonl(tmp_path / "s.jsonl", rows), batch_size=4, val_fraction=0.2)
    assert (dm.stats["train_examples"], dm.stats["val_examples"]) == (24, 6)
    torch.manual_seed(0)
    seen: list[int] = []
    for loader, split in ((dm.train_dataloader(), dm.train_set), (dm.val_dataloader(), dm.val_set)):
        for batch in loader:
            assert set(batch.columns) == {"answer", "meta"}
            assert [split[i].text for i in batch.index.tolist()] == batch.prompts
            for j, text in enumerate(batch.prompts):
                n = batch.columns["meta"][j]["n"]
                assert batch.columns["answer"][j] == str(7 * n) and f"Question {n}\n" in text
                seen.append(n)
    assert sorted(seen) == list(range(30)) and seen[:24] != sorted(seen[:24])  # shuffled, none lost


def test_files_with_different_columns_get_none_where_absent(tokenizer, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "x", "answer": "1"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "y", "source": "web"}])
    dm = make(tokenizer, [str(a), str(b)])
    assert dm.collate(dm.train_set).columns == {"answer": ["1", None], "source": [None, "web"]}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"text": "a"}], r"x.jsonl has no 'prompt' column \(columns: text\)"),
        ([{"prompt": "a", "answer": "1"}, {"answer": "2"}], r"x.jsonl row 1 has no 'prompt' field \(it has: answer\)"),
        ([{"prompt": "a"}, {"prompt": "  "}], r"x.jsonl row 1 has an empty 'prompt' field"),
        ([{"prompt": [{"role": "user"}]}], r"x.jsonl row 0 'prompt' message 0 needs string"),
        (
            [{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}],
            r"x.jsonl row 0 'prompt' ends with an assistant message",
        ),
    ],
)
def test_bad_rows_name_file_row_and_key(tokenizer, tmp_path: Path, rows, message) -> None:
    with pytest.raises(FTLabError, match=message):
        make(tokenizer, write_jsonl(tmp_path / "x.jsonl", rows))


def test_gsm8k_rows_become_question_prompts_with_answer_and_solution(tokenizer, tmp_path: Path) -> None:
    rows = [
        {"question": "How many?", "answer": "She has 1,000 + 234 = <<1000+234=1234>>1,234 apples.\n#### 1,234"},
        {"question": "Debt?", "answer": "It is 2 - 5 = <<2-5=-3>>-3.\n#### -3"},
    ]
    dm = make(tokenizer, write_jsonl(tmp_path / "g.jsonl", rows), cls=GSM8KDataModule)
    batch = dm.collate(dm.train_set)
    assert batch.columns == {
        "answer": ["1234", "-3"],
        "solution": ["She has 1,000 + 234 = 1,234 apples.\n#### 1,234", "It is 2 - 5 = -3.\n#### -3"],
    }
    assert batch.prompts[0] == "<|user|>\nHow many?\nGive the final answer after '####'.\n<|assistant|>\n"
    bare = make(tokenizer, write_jsonl(tmp_path / "g.jsonl", rows), cls=GSM8KDataModule, instruction_suffix=None)
    assert bare.train_set[1].text == "<|user|>\nDebt?\n<|assistant|>\n"
    assert strip_annotations("16 - 3 - 4 = <<16-3-4=9>>9") == "16 - 3 - 4 = 9"
    assert final_answer("so\n####  12,345.5 ", "r") == "12345.5"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("The answer is 5.", r"g.jsonl row 1: the solution has no '####' line"),
        ("#### five", r"g.jsonl row 1: the final answer after '####' is not a number: 'five'"),
    ],
)
def test_gsm8k_bad_solutions_name_file_and_row(tokenizer, tmp_path: Path, answer: str, message: str) -> None:
    rows = [{"question": "a", "answer": "#### 1"}, {"question": "b", "answer": answer}]
    with pytest.raises(FTLabError, match=message):
        make(tokenizer, write_jsonl(tmp_path / "g.jsonl", rows), cls=GSM8KDataModule)


def test_bundled_synthetic_prompts(tokenizer) -> None:
    dm = make(tokenizer, REPO / "ftlab/assets/synthetic_prompts.jsonl", val_fraction=0.125, max_prompt_length=64)
    assert dm.stats == {"rows": 64, "train_examples": 56, "val_examples": 8}
    texts = [json.loads(line)["prompt"] for line in (REPO / "ftlab/assets/synthetic_prompts.jsonl").open()]
    assert len(set(texts)) == 64


@pytest.mark.skipif(not GSM8K_TEST.is_file(), reason="the shared offline data folder is not beside this checkout")
def test_gsm8k_test_split_parses(tokenizer) -> None:
    dm = make(tokenizer, GSM8K_TEST, cls=GSM8KDataModule, max_length=1024)
    assert dm.stats == {"rows": 1319, "train_examples": 1319, "val_examples": 0}
    answers = [ex.columns["answer"] for ex in dm.train_set]
    assert [float(a) for a in answers][:2] == [18.0, 3.0]  # float() raises on any answer that is not a number
    assert not any("<<" in ex.columns["solution"] or "," in ex.columns["answer"] for ex in dm.train_set)
    assert all(ex.text.endswith("after '####'.\n<|assistant|>\n") for ex in dm.train_set)
