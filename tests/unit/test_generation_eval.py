"""Generation eval: exact match, ROUGE-L F and BLEU on hand-scored pairs; reading held-out prompts."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ftlab.callbacks.generation_eval import GenerationEval, text_metrics
from ftlab.errors import FTLabError
from tests.conftest import write_jsonl


def test_metrics_by_hand() -> None:
    answers = ["the answer is 42", "the cat sat on the mat"]
    references = ["the answer is 42", "the cat sat on a mat"]
    got = text_metrics(answers, references)
    assert got["exact_match"] == 0.5
    # ROUGE-L: pair 1 is 1; pair 2's longest common subsequence "the cat sat on mat" is 5 of 6 words
    # each side, so P = R = F = 5/6; the mean is 11/12
    assert got["rougeL_f"] == pytest.approx(11 / 12, abs=1e-4)
    # corpus BLEU-4, clipped n-gram matches over both pairs: 1-grams (4 + 5) / (4 + 6), 2-grams
    # (3 + 3) / (3 + 5), 3-grams (2 + 2) / (2 + 4), 4-grams (1 + 1) / (1 + 3); 10 words each side, BP = 1
    expected = math.exp((math.log(9 / 10) + math.log(6 / 8) + math.log(4 / 6) + math.log(2 / 4)) / 4)
    assert got["bleu"] == pytest.approx(expected, abs=1e-4)  # 0.6887
    assert text_metrics(["a  b "], ["a b"])["exact_match"] == 1.0  # whitespace is collapsed


def test_reads_self_instruct_layout_and_scores_gsm8k(tmp_path: Path, tokenizer, monkeypatch) -> None:
    rows = [
        {"instruction": "Add.", "instances": [{"input": "2 + 3", "output": "5"}], "answer": "5"},
        {"instruction": "Name a colour.", "instances": [{"input": "", "output": "blue"}], "answer": "so #### 1,234"},
    ]
    path = write_jsonl(tmp_path / "held.jsonl", rows)
    callback = GenerationEval(file=str(path), gsm8k_field="answer")
    callback.rows = callback.read()
    assert callback.rows[0] == {"prompt": "Add.\n\n2 + 3", "reference": "5", "gsm8k": "5"}
    assert callback.rows[1]["prompt"] == "Name a colour."
    monkeypatch.setattr(callback, "answer", lambda model, tok, batch: ["It is #### 5", "blue"][: len(batch)])
    module = SimpleNamespace(tokenizer=tokenizer, model=None, device=torch.device("cpu"))
    metrics, table = callback.evaluate(module)
    assert metrics["gsm8k_accuracy"] == 0.5  # 5 == 5; "blue" holds no number, 1234 expected
    assert metrics["exact_match"] == 0.5 and table[1]["answer"] == "blue"
    batch = callback.encode(tokenizer, ["Add.", "A much longer prompt than the first one."])
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[:, -1].all()  # left-padded
    callback.rows[1]["gsm8k"] = "none"
    with pytest.raises(FTLabError, match="row 1: 'answer' holds no number"):
        callback.evaluate(module)


def test_refuses_a_training_file_and_missing_fields(tmp_path: Path, sft_file: Path) -> None:
    callback = GenerationEval(file=str(sft_file))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(train_specs=[str(sft_file)]))
    with pytest.raises(FTLabError, match="also a training file"):
        callback.setup(trainer, None, "fit")
    tasks = {"a": SimpleNamespace(train_specs=["x.jsonl"]), "b": SimpleNamespace(train_specs=[str(sft_file)])}
    mixture = SimpleNamespace(train_specs=["a", "b"], tasks=tasks)  # a mixture's own specs are task names
    with pytest.raises(FTLabError, match="also a training file"):  # a mixture's task trains on it
        callback.setup(SimpleNamespace(datamodule=mixture), None, "fit")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x"}])
    with pytest.raises(FTLabError, match="row 0 has no 'output'"):
        GenerationEval(file=str(bad)).read()
    with pytest.raises(FTLabError, match="nothing to score"):
        GenerationEval(file=str(bad), reference_field=None)


def answer_length_matches(
    prompts: list[str], completions: list[str], completion_ids: list[list[int]], **columns: list[str]
) -> list[float]:
    """1.0 where the answer has as many words as the row's `words` field says."""
    return [float(len(c.split()) == int(w)) for c, w in zip(completions, columns["words"], strict=True)]


def test_scores_with_reward_functions_and_their_columns(tmp_path: Path, tokenizer, monkeypatch) -> None:
    from ftlab.rewards import FunctionReward, gsm8k_format

    rows = [{"q": "One word?", "words": "1"}, {"q": "Two words?", "words": "2"}, {"q": "Three?", "words": "3"}]
    path = write_jsonl(tmp_path / "held.jsonl", rows)
    rewards = [FunctionReward(answer_length_matches), FunctionReward(gsm8k_format, name="format")]
    callback = GenerationEval(
        file=str(path),
        prompt_field="q",
        input_field=None,
        reference_field=None,
        rewards=rewards,
        reward_columns=["words"],
    )
    callback.rows = callback.read()
    assert callback.rows[1]["columns"] == {"words": "2"}
    answers = ["yes", "#### 12", "a b"]  # word counts 1, 2, 2 against 1, 2, 3; only the second has the format
    monkeypatch.setattr(callback, "answer", lambda model, tok, batch: answers[: len(batch)])
    module = SimpleNamespace(tokenizer=tokenizer, model=None, device=torch.device("cpu"))
    metrics, _ = callback.evaluate(module)
    assert metrics == {"answer_length_matches": pytest.approx(2 / 3), "format": pytest.approx(1 / 3)}
    with pytest.raises(FTLabError, match="row 0 has no 'lines' field"):
        GenerationEval(
            file=str(path), prompt_field="q", reference_field=None, rewards=rewards, reward_columns=["lines"]
        ).read()
    with pytest.raises(FTLabError, match="nothing to score"):
        GenerationEval(file=str(path), reference_field=None)
