"""The masked SFT loss against numbers worked out by hand."""

import math

import torch

from ftlab.objectives.sft import IGNORE, TokenPerplexity, masked_nll


def test_masked_nll_by_hand() -> None:
    # Vocabulary of 2. Logits at positions 0 and 1 predict labels at positions 1 and 2.
    # Position 0: logits (0, 0)  -> p = (1/2, 1/2); label[1] = 1 -> -log(1/2) = ln 2
    # Position 1: logits (ln 3, 0) -> p = (3/4, 1/4); label[2] = 0 -> -log(3/4)
    # Position 2 predicts nothing (no next token). label[0] is never predicted.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE, 1, 0]])
    total, count = masked_nll(logits, labels)
    assert count.item() == 2
    assert math.isclose(total.item(), math.log(2) - math.log(0.75), rel_tol=1e-6)


def test_masked_tokens_carry_no_loss() -> None:
    # Masking the second target leaves only ln 2; the value of the masked logits does not matter.
    logits = torch.tensor([[[0.0, 0.0], [100.0, -100.0], [0.0, 0.0]]])
    labels = torch.tensor([[IGNORE, 1, IGNORE]])
    total, count = masked_nll(logits, labels)
    assert count.item() == 1
    assert math.isclose(total.item(), math.log(2), rel_tol=1e-6)


def test_loss_is_token_weighted_across_rows() -> None:
    # Row 0 has one target at ln 2, row 1 has two targets at ln 2 and -ln(3/4):
    # the batch mean is (2 ln 2 - ln 0.75) / 3, not the mean of the row means.
    logits = torch.tensor(
        [
            [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
            [[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 0.0]],
        ]
    )
    labels = torch.tensor([[IGNORE, 0, IGNORE], [IGNORE, 1, 0]])
    total, count = masked_nll(logits, labels)
    assert math.isclose((total / count).item(), (2 * math.log(2) - math.log(0.75)) / 3, rel_tol=1e-6)


def test_perplexity_is_exp_of_token_weighted_mean() -> None:
    metric = TokenPerplexity()
    metric.update(torch.tensor(1.0), weight=torch.tensor(3))
    metric.update(torch.tensor(2.0), weight=torch.tensor(1))
    assert math.isclose(metric.compute().item(), math.exp((3 * 1.0 + 2.0) / 4), rel_tol=1e-6)
