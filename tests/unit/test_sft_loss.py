"""The masked SFT loss against numbers worked out by hand."""

import math
from contextlib import nullcontext
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from ftlab.objectives.base import StepContext
from ftlab.objectives.sft import IGNORE, TokenPerplexity, global_token_mean, masked_nll


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


@dataclass
class OneOfTwoRanks(StepContext):
    """A rank of two whose all-reduce returns `everyone`: both ranks' [summed NLL, token count], summed."""

    everyone: torch.Tensor | None = None

    def sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        assert value.shape == self.everyone.shape and not value.requires_grad
        return self.everyone.to(value.dtype)


def test_one_process_loss_is_the_token_mean() -> None:
    ctx = StepContext(model=nn.Identity(), reference=nullcontext)
    loss, shown = global_token_mean(torch.tensor(6.0), torch.tensor(3), ctx)
    assert loss.item() == shown.item() == 2.0
    assert global_token_mean(torch.tensor(0.0), torch.tensor(0), ctx)[0].item() == 0.0  # no answer token


def test_gradient_averaged_over_ranks_is_that_of_the_global_token_mean() -> None:
    # One weight w scales each token's NLL: rank 0 holds 3 tokens with NLL w·(1, 2, 3), rank 1 one token with
    # NLL w·4. The global token mean is w·10/4: gradient 2.5 at w = 1. Rank 0's loss is 6w·2/4 (gradient 3),
    # rank 1's is 4w·2/4 (gradient 2); DDP averages them: 2.5. The mean of the ranks' own token means,
    # (2w + 4w)/2, would give 3.
    w = torch.tensor(1.0, requires_grad=True)
    everyone = torch.tensor([10.0, 4.0], dtype=torch.float64)
    grads, shown = [], []
    for values in ([1.0, 2.0, 3.0], [4.0]):
        ctx = OneOfTwoRanks(model=nn.Identity(), reference=nullcontext, ranks=2, everyone=everyone)
        loss, logged = global_token_mean((w * torch.tensor(values)).sum(), torch.tensor(len(values)), ctx)
        grads.append(torch.autograd.grad(loss, w)[0].item())
        shown.append(logged.item())
    assert grads == pytest.approx([3.0, 2.0]) and sum(grads) / 2 == pytest.approx(2.5)
    assert shown == [2.5, 2.5]  # the global token mean, logged alike on every rank
