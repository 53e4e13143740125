"""KTO: unpaired feedback data (batches, mismatched pairs, bad rows), the loss by hand and against TRL."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ftlab.batches import FeedbackBatch
from ftlab.data import FeedbackDataModule
from ftlab.data.chat import IGNORE
from ftlab.errors import FTLabError
from ftlab.objectives import KTO, StepContext
from ftlab.objectives.kto import kto_losses
from tests.conftest import write_jsonl


def make(tokenizer, train: Path, **kwargs: Any) -> FeedbackDataModule:
    dm = FeedbackDataModule(train=str(train), val_fraction=0.0, max_length=64, **kwargs)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    return dm


def answer(batch: FeedbackBatch, row: int) -> torch.Tensor:
    return batch.input_ids[row][batch.labels[row] != IGNORE]


def test_batches_hold_examples_then_mismatched_pairs(tokenizer, tmp_path: Path) -> None:
    rows = [{"prompt": f"Question {i}", "completion": f"answer {i}", "label": i % 2 == 0} for i in range(3)]
    rows.append({"prompt": "Empty", "completion": " ", "label": 1})
    dm = make(tokenizer, write_jsonl(tmp_path / "f.jsonl", rows), batch_size=3)
    assert dm.stats["dropped_empty_answer"] == 1
    batch = dm.collate(dm.train_set)
    assert batch.input_ids.shape[0] == 6 and batch.desirable.tolist() == [True, False, True]
    for i in range(3):
        assert tokenizer.decode(answer(batch, i)) == f"answer {i}</s>"
        # row 3 + i: prompt i with the answer of i + 1
        assert tokenizer.decode(answer(batch, 3 + i)) == f"answer {(i + 1) % 3}</s>"
        start = int((batch.labels[3 + i] != IGNORE).nonzero()[0])
        assert tokenizer.decode(batch.input_ids[3 + i, :start]).endswith(f"Question {i}\n<|assistant|>\n")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "Q", "completion": "A", "label": "yes"}, "row 1 'label' must be true or false"),
        ({"prompt": "Q", "completion": "A", "label": 2}, "row 1 'label' must be true or false"),
        ({"prompt": "Q", "completion": None, "label": True}, "row 1 has no 'completion' field"),
    ],
)
def test_a_bad_row_is_named(row: dict, message: str, tokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q", "completion": "A", "label": True}, row])
    with pytest.raises(FTLabError, match=f"data file {path} {message}"):
        make(tokenizer, path)


def test_a_missing_column_is_named(tokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}])
    with pytest.raises(FTLabError, match="has no 'completion' column"):
        make(tokenizer, path)


def test_kto_loss_by_hand() -> None:
    # β = 1, z₀ = ½: desirable r = ½ -> 1 − σ(0) = ½; undesirable r = −½ -> 1 − σ(1); λ_U = 2 doubles it
    losses = kto_losses(torch.tensor([0.5, -0.5]), torch.tensor([True, False]), torch.tensor(0.5), 1.0, 1.0, 2.0)
    torch.testing.assert_close(losses, torch.tensor([0.5, 2 * (1 - 1 / (1 + math.exp(-1)))]))


def test_kto_matches_trl(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("trl", reason="TRL (the reference implementation) is not installed")
    from trl.trainer.kto_trainer import KTOTrainer

    g = torch.Generator().manual_seed(0)
    b = 6
    logps = (-torch.rand(b, generator=g) * 5).requires_grad_()
    ref, mismatched, ref_mismatched = (-torch.rand(b, generator=g) * 5 for _ in range(3))
    desirable = torch.tensor([True, False, True, True, False, False])
    assert float((mismatched - ref_mismatched).mean()) > 0  # z₀ is not clamped to 0: the KL term takes part

    # ftlab: the objective with its log-probs replaced by these numbers
    table = {"policy": torch.cat([logps, mismatched]), "reference": torch.cat([ref, ref_mismatched])}
    monkeypatch.setattr(
        "ftlab.objectives.kto.feedback_logps", lambda model, batch: (table[model][:b], table[model][b:])
    )
    batch = FeedbackBatch(
        input_ids=torch.zeros(2 * b, 3, dtype=torch.long),
        attention_mask=torch.ones(2 * b, 3),
        labels=torch.zeros(2 * b, 3, dtype=torch.long),
        desirable=desirable,
        index=torch.arange(b),
    )

    def reference():
        from contextlib import nullcontext

        return nullcontext("reference")

    objective = KTO(beta=0.3, desirable_weight=1.0, undesirable_weight=1.5)
    ours = objective.compute(StepContext(model="policy", reference=reference), batch)["loss"]  # type: ignore[arg-type]

    # TRL: a model whose per-token log-probs sum to the same numbers (all on the last position)
    def model(**kwargs: Any) -> SimpleNamespace:
        source = mismatched if "KL" in str(kwargs.get("tag")) else logps
        log_probs = torch.zeros(b, 2)
        log_probs = log_probs + torch.stack([torch.zeros(b), source], 1)
        zeros = torch.zeros(b, 2)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    class Accelerator:
        device = torch.device("cpu")
        num_processes = 1

        def gather(self, x):
            return x

        gather_for_metrics = gather

    trainer = SimpleNamespace(
        _metrics=defaultdict(lambda: defaultdict(list)),
        accelerator=Accelerator(),
        model=SimpleNamespace(training=True),
        aux_loss_enabled=False,
        calculate_KL=True,
        precompute_ref_logps=True,
        loss_type="kto",
        beta=0.3,
        desirable_weight=1.0,
        undesirable_weight=1.5,
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(b, 3, dtype=torch.long),
        "attention_mask": torch.ones(b, 3),
        "completion_mask": torch.ones(b, 3),
        "KL_input_ids": torch.zeros(b, 3, dtype=torch.long),
        "KL_attention_mask": torch.ones(b, 3),
        "KL_completion_mask": torch.ones(b, 3),
        "label": desirable,
        "ref_logps": ref,
        "ref_KL_logps": ref_mismatched,
    }
    calls = iter(["KL", "main"])
    trainer._compute_kl_logps = lambda m, batch: KTOTrainer._compute_kl_logps(trainer, m, batch)
    theirs = KTOTrainer._compute_loss(trainer, lambda **kw: model(tag=next(calls), **kw), inputs, return_outputs=False)
    (g_ours,) = torch.autograd.grad(ours, logps, retain_graph=True)
    (g_theirs,) = torch.autograd.grad(theirs, logps)
    diff = max(float((ours - theirs).detach().abs()), float((g_ours - g_theirs).abs().max()))
    print(f"kto: max |diff| {diff:.2e}")
    assert diff < 1e-6
