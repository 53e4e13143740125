"""DPO, IPO, cDPO and Bradley–Terry on numbers worked out by hand; the objectives on a tiny Llama."""

import math
from contextlib import contextmanager

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from ftlab.batches import PreferenceBatch
from ftlab.objectives import DPO, Reward, StepContext
from ftlab.objectives.dpo import IPO, Sigmoid, preference_logits, reward_metrics, sequence_logps
from ftlab.objectives.reward import bradley_terry_loss

LOG_SIG_1 = math.log(1 + math.exp(-1))  # −log σ(1) = 0.3132617


def test_sequence_logps_sums_answer_tokens_only() -> None:
    # vocab 2; uniform logits give log ½ per predicted token; row 0 has two labelled targets, row 1 one.
    # Row 1's second position has logits (ln 3, 0): p(0) = ¾, but it is masked.
    logits = torch.zeros(2, 3, 2)
    logits[1, 1] = torch.tensor([math.log(3.0), 0.0])
    labels = torch.tensor([[-100, 1, 0], [-100, 0, -100]])
    assert torch.allclose(sequence_logps(logits, labels), torch.tensor([2 * math.log(0.5), math.log(0.5)]))


def test_dpo_losses_by_hand() -> None:
    # h = (π_w − ref_w) − (π_l − ref_l) = (−1 + 2) − (−3 + 2) = 2
    h = preference_logits(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
    assert h.item() == 2.0
    # sigmoid, β = ½: −log σ(1)
    assert math.isclose(Sigmoid()(h, 0.5).item(), LOG_SIG_1, rel_tol=1e-6)
    # cDPO ε = 0.1: 0.9 · (−log σ(1)) + 0.1 · (−log σ(−1)), and −log σ(−1) = 1 + (−log σ(1))
    assert math.isclose(Sigmoid(0.1)(h, 0.5).item(), 0.9 * LOG_SIG_1 + 0.1 * (1 + LOG_SIG_1), rel_tol=1e-6)
    # IPO: (h − 1/(2β))²: β = ½ -> (2 − 1)² = 1; β = ¼ -> (2 − 2)² = 0
    assert IPO()(h, 0.5).item() == 1.0 and IPO()(h, 0.25).item() == 0.0


def test_bradley_terry_by_hand() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # pair 0: −log σ(1); pair 1: −log σ(−1) = 1 + (−log σ(1)); mean of the two
    assert math.isclose(bradley_terry_loss(chosen, rejected).item(), (2 * LOG_SIG_1 + 1) / 2, rel_tol=1e-6)
    # a margin of 1 turns pair 0 into −log σ(0) = ln 2
    assert math.isclose(bradley_terry_loss(chosen[:1], rejected[:1], 1.0).item(), math.log(2), rel_tol=1e-6)


def pair_batch(n: int = 2, t: int = 8) -> PreferenceBatch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (2 * n, t), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100  # the first 4 tokens are the prompt
    return PreferenceBatch(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, index=torch.arange(n))


def test_dpo_at_the_reference_is_ln2_with_zero_rewards(tiny_llama) -> None:
    model = tiny_llama.load_model(AutoModelForCausalLM).eval()

    @contextmanager
    def same():
        with torch.no_grad():
            yield model

    values = DPO(beta=0.1).compute(StepContext(model=model, reference=same), pair_batch())
    assert math.isclose(values["loss"].item(), math.log(2), rel_tol=1e-6)
    assert values["rewards/chosen"].item() == values["rewards/margin"].item() == 0.0
    values["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_reward_scores_the_last_real_token(tiny_llama) -> None:
    model = tiny_llama.load_model(AutoModel).eval()
    objective = Reward()
    objective.setup_model(model)
    batch = pair_batch()
    padded = batch.input_ids.clone()
    mask = torch.ones_like(padded)
    padded[:, 6:], mask[:, 6:] = 0, 0  # right padding after 6 real tokens
    with torch.no_grad():
        scores = objective.score(model, padded, mask)
        short = objective.score(model, batch.input_ids[:, :6], torch.ones_like(batch.input_ids[:, :6]))
    assert scores.shape == (4,)
    torch.testing.assert_close(scores, short, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("objective", [DPO(), Reward()])
def test_preference_objectives_consume_preference_batches(objective) -> None:
    assert objective.batch_type is PreferenceBatch


def labelled_rows() -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of 7 tokens: labels on a varying answer span, right padding (label -100) after it."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 0, 0, 0], [16, 17, 18, 19, 20, 21, 0]])
    labels = torch.full_like(ids, -100)
    labels[0, 3:] = ids[0, 3:]
    labels[1, 2:4] = ids[1, 2:4]
    labels[2, 5:6] = ids[2, 5:6]
    return ids, labels


def test_head_on_labelled_positions_equals_the_full_logits(tiny_llama) -> None:
    # the 2-D head ([M, H] @ [H, V] on the 4 + 2 + 1 labelled positions) against the full [N, T, V] logits:
    # the same log-probabilities and gradients, within float32 rounding
    from ftlab.methods import LoRA
    from ftlab.objectives.token_logps import _HEAD_ON_HIDDEN, labelled_logps, token_logps

    torch.manual_seed(0)
    model = LoRA(r=4).apply(tiny_llama.load_model(AutoModelForCausalLM))
    ids, labels = labelled_rows()
    mask = (ids != 0).long()
    fast, rows = labelled_logps(model, ids, labels, attention_mask=mask)
    assert _HEAD_ON_HIDDEN[model] is True and rows.tolist() == [0, 0, 0, 0, 1, 1, 2]
    fast.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    full, full_rows = token_logps(model(input_ids=ids, attention_mask=mask).logits, labels)
    full.sum().backward()
    assert torch.equal(rows, full_rows)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6)


def test_a_model_that_rescales_its_logits_falls_back_to_the_logits(tiny_llama) -> None:
    # a model whose logits are not head(last hidden state) (here: doubled, as a logit scale would) is
    # detected on first use and scored from its own logits
    from ftlab.objectives.token_logps import _HEAD_ON_HIDDEN, labelled_logps, token_logps

    class Doubled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def get_output_embeddings(self) -> torch.nn.Module:
            return self.inner.get_output_embeddings()

        def forward(self, **kwargs):
            out = self.inner(**kwargs)
            out.logits = out.logits * 2
            return out

    model = Doubled(tiny_llama.load_model(AutoModelForCausalLM))
    ids, labels = labelled_rows()
    with torch.no_grad():
        fast, _ = labelled_logps(model, ids, labels)
        again, _ = labelled_logps(model, ids, labels)  # the decision is remembered
        full, _ = token_logps(model(input_ids=ids).logits, labels)
    assert _HEAD_ON_HIDDEN[model] is False
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, full, rtol=1e-5, atol=1e-5)


def test_choice_accuracy_ranks_answers_by_mean_token_log_prob() -> None:
    # means: chosen (-4/2, -9/3) = (-2, -3), rejected (-3/1, -8/4) = (-3, -2): pair 0 won, pair 1 lost -> 0.5;
    # by summed log-probs both pairs would be lost (-4 < -3, -9 < -8)
    chosen, rejected = torch.tensor([-4.0, -9.0]), torch.tensor([-3.0, -8.0])
    lengths = (torch.tensor([2.0, 3.0]), torch.tensor([1.0, 4.0]))
    zero = torch.zeros(2)
    metrics = reward_metrics(zero, zero, chosen, rejected, lengths)
    assert metrics["choice/accuracy"].item() == 0.5
    assert metrics["logps/chosen"].item() == -6.5 and metrics["rewards/accuracy"].item() == 0.0
