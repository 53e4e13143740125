"""KTO on preference pairs, read as unpaired feedback (as TRL's KTO reads them): the unpaired view built by hand,
and `choice/accuracy` on the pairs (the measure every pairwise objective logs) on hand numbers."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from ftlab.batches import FeedbackBatch, PreferenceBatch
from ftlab.composition import check_composition
from ftlab.errors import FTLabError
from ftlab.methods import LoRA
from ftlab.objectives import DPO, KTO, StepContext
from ftlab.objectives.kto import unpaired

X, P = -100, 99  # ignored label, padding id


def pairs() -> PreferenceBatch:
    """2 pairs, width 6: chosen (5 6 | 7 8), (9 | 10 11 12); rejected (5 6 | 13), (9 | 14 15 16 17 18)."""
    ids = torch.tensor([[5, 6, 7, 8, P, P], [9, 10, 11, 12, P, P], [5, 6, 13, P, P, P], [9, 14, 15, 16, 17, 18]])
    labels = torch.tensor([[X, X, 7, 8, X, X], [X, 10, 11, 12, X, X], [X, X, 13, X, X, X], [X, 14, 15, 16, 17, 18]])
    mask = (ids != P).long()
    return PreferenceBatch(input_ids=ids, attention_mask=mask, labels=labels, index=torch.tensor([3, 1]), num_tokens=17)


def test_pairs_unpaired_by_hand() -> None:
    view = unpaired(pairs())
    assert isinstance(view, FeedbackBatch) and len(view) == 4
    assert view.desirable.tolist() == [True, True, False, False] and view.index.tolist() == [3, 1, 3, 1]
    # row i's prompt with row (i + 1) mod 4's answer; the third cut to the batch's width of 6
    mismatched = [[5, 6, 10, 11, 12, P], [9, 13, P, P, P, P], [5, 6, 14, 15, 16, 17], [9, 7, 8, P, P, P]]
    assert view.input_ids.tolist() == pairs().input_ids.tolist() + mismatched
    assert view.labels[4:].tolist() == [
        [X, X, 10, 11, 12, X],
        [X, 13, X, X, X, X],
        [X, X, 14, 15, 16, 17],
        [X, 7, 8, X, X, X],
    ]
    assert view.attention_mask[4:].sum(-1).tolist() == [5, 2, 6, 3] and view.num_tokens == 17


@contextmanager
def reference():
    yield "reference"


def test_choice_accuracy_on_pairs_ranks_by_mean_token_logprob(monkeypatch: pytest.MonkeyPatch) -> None:
    # policy answers' sums: chosen −4 (2 tokens), −3 (3); rejected −3 (1), −10 (5): by the mean per token the
    # chosen wins both pairs (−2 > −3, −1 > −2) though by the sum it loses the first (−4 < −3)
    sums = {"policy": torch.tensor([-4.0, -3.0, -3.0, -10.0]), "reference": torch.tensor([-4.0, -3.0, -3.0, -10.0])}
    monkeypatch.setattr("ftlab.objectives.kto.feedback_logps", lambda model, b: (sums[model], torch.zeros(4)))
    values = KTO(beta=0.1).compute(StepContext(model="policy", reference=reference), pairs())  # type: ignore[arg-type]
    assert values["choice/accuracy"].item() == 1.0
    # r = 0 everywhere and z0 = 0: each answer costs 1 − σ(0) = ½
    assert values["loss"].item() == pytest.approx(0.5)


def test_kto_composes_with_pairs_and_feedback_but_not_prompts() -> None:
    from ftlab.data import FeedbackDataModule, PreferenceDataModule, PromptDataModule

    for data in (PreferenceDataModule, FeedbackDataModule):
        check_composition(LoRA(), KTO(), data.__new__(data), None)
    with pytest.raises(FTLabError, match="consumes FeedbackBatch or PreferenceBatch batches but datamodule"):
        check_composition(LoRA(), KTO(), PromptDataModule.__new__(PromptDataModule), None)
    with pytest.raises(FTLabError, match="objective DPO consumes PreferenceBatch batches"):
        check_composition(LoRA(), DPO(), FeedbackDataModule.__new__(FeedbackDataModule), None)


def test_kto_refuses_a_device_batch_of_one_example_or_one_pair() -> None:
    from ftlab.data import FeedbackDataModule, PreferenceDataModule

    for data, kind in ((PreferenceDataModule, "pairs"), (FeedbackDataModule, "examples")):
        module = data.__new__(data)
        module.batch_size = 1
        with pytest.raises(FTLabError, match=f"KTO needs data batch_size of at least 2 {kind}: .* batch_size 1 has"):
            check_composition(LoRA(), KTO(), module, None)
        module.batch_size = 2  # the mismatched pairs then cross prompts (see test_pairs_unpaired_by_hand)
        module.eval_batch_size = 1  # validation computes the same estimate
        with pytest.raises(FTLabError, match=f"KTO needs data eval_batch_size of at least 2 {kind}"):
            check_composition(LoRA(), KTO(), module, None)
        module.eval_batch_size = 2
        check_composition(LoRA(), KTO(), module, None)
