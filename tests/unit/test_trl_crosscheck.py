"""ftlab's losses against TRL's own trainer code on random log-probabilities (TRL called with stub trainers:
only the attributes its loss code reads). Values and gradients must agree to 1e-6."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ftlab.batches import PreferenceBatch
from ftlab.objectives import DPO, GRPO, ORPO, SimPO, StepContext
from ftlab.objectives.dpo import IPO, Sigmoid
from ftlab.objectives.grpo import GRPOBuffer
from ftlab.objectives.rollouts import Rollout
from ftlab.rewards import FunctionReward

trl = pytest.importorskip("trl", reason="TRL (the reference implementation) is not installed: pip install ftlab[test]")

B, T = 5, 9
TOL = 1e-6


class Accelerator:
    device = torch.device("cpu")
    num_processes = 1
    is_main_process = True

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x

    gather_for_metrics = gather

    def reduce(self, x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return x


def stub(**attributes: Any) -> SimpleNamespace:
    """A stand-in for a TRL trainer: metrics sink, identity accelerator, the given settings."""
    return SimpleNamespace(
        _metrics=defaultdict(lambda: defaultdict(list)),
        accelerator=Accelerator(),
        model=SimpleNamespace(training=True),
        aux_loss_enabled=False,
        **attributes,
    )


def pairs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PreferenceBatch]:
    """Per-token log-probs of policy and reference [2B, T-1] (zero off the answer), the answers' shifted mask,
    and a batch whose labels mark the same answers (lengths 1 to T-1 tokens)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T, (2 * B,), generator=g)
    mask = (torch.arange(T - 1)[None] >= (T - 1 - lengths)[:, None]).float()  # the answer ends each row
    policy = -torch.rand(2 * B, T - 1, generator=g) * 3 * mask
    reference = -torch.rand(2 * B, T - 1, generator=g) * 3 * mask
    labels = torch.full((2 * B, T), -100)
    labels[:, 1:][mask.bool()] = 7
    batch = PreferenceBatch(
        input_ids=torch.zeros_like(labels), attention_mask=torch.ones_like(labels), labels=labels, index=torch.arange(B)
    )
    return policy.requires_grad_(), reference, mask, batch


def ftlab_pair_loss(
    objective: DPO,
    module: str,
    policy: torch.Tensor,
    reference: torch.Tensor,
    batch: PreferenceBatch,
    monkeypatch: pytest.MonkeyPatch,
) -> torch.Tensor:
    """The objective's loss with its answer log-probs replaced by the sums of the given per-token ones."""
    sums = {"policy": policy.sum(-1), "reference": reference.sum(-1)}
    monkeypatch.setattr(f"ftlab.objectives.{module}.answer_logps", lambda model, b: (sums[model][:B], sums[model][B:]))

    def ref():
        from contextlib import nullcontext

        return nullcontext("reference")

    return objective.compute(StepContext(model="policy", reference=ref), batch)["loss"]  # type: ignore[arg-type]


def check(ours: torch.Tensor, theirs: torch.Tensor, wrt: torch.Tensor) -> float:
    (g_ours,) = torch.autograd.grad(ours, wrt, retain_graph=True)
    (g_theirs,) = torch.autograd.grad(theirs, wrt)
    diff = max(float((ours - theirs).detach().abs()), float((g_ours - g_theirs).abs().max()))
    assert diff < TOL, diff
    return diff


@pytest.mark.parametrize(
    ("loss", "trl_type", "smoothing"),
    [(Sigmoid(), "sigmoid", 0.0), (IPO(length_normalized=True), "ipo", 0.0)],
    ids=["dpo", "ipo_normalized"],
)
def test_dpo_losses_match_trl(loss, trl_type: str, smoothing: float, monkeypatch: pytest.MonkeyPatch) -> None:
    from trl import DPOTrainer

    policy, reference, mask, batch = pairs(0)
    ours = ftlab_pair_loss(DPO(beta=0.1, loss=loss), "dpo", policy, reference, batch, monkeypatch)

    def model(**kwargs: Any) -> SimpleNamespace:
        zeros = torch.zeros(2 * B, T - 1)
        return SimpleNamespace(log_probs=policy, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    completion = torch.cat([torch.zeros(2 * B, 1), mask], 1)
    trainer = stub(
        beta=0.1,
        loss_types=[trl_type],
        loss_weights=[1.0],
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        use_weighting=False,
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(2 * B, T, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T),
        "completion_mask": completion,
        "ref_chosen_logps": reference.sum(-1)[:B],
        "ref_rejected_logps": reference.sum(-1)[B:],
    }
    theirs = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    print(f"{trl_type}: max |diff| {check(ours, theirs, policy):.2e}")


def test_simpo_matches_trl_cpo(monkeypatch: pytest.MonkeyPatch) -> None:
    from trl.experimental.cpo import CPOTrainer

    policy, reference, mask, batch = pairs(1)
    ours = ftlab_pair_loss(
        SimPO(beta=2.0, gamma=0.7, label_smoothing=0.1), "simpo", policy, reference, batch, monkeypatch
    )
    means = policy.sum(-1) / mask.sum(-1)
    trainer = stub(alpha=0.0, loss_type="simpo", simpo_gamma=0.7, beta=2.0, label_smoothing=0.1)
    theirs = CPOTrainer.cpo_loss(trainer, means[:B], means[B:])[0].mean()
    print(f"simpo: max |diff| {check(ours, theirs, policy):.2e}")


def test_orpo_matches_trl(monkeypatch: pytest.MonkeyPatch) -> None:
    from trl.experimental.orpo import ORPOTrainer

    policy, reference, mask, batch = pairs(2)
    ours = ftlab_pair_loss(ORPO(lam=0.25), "orpo", policy, reference, batch, monkeypatch)
    means = policy.sum(-1) / mask.sum(-1)
    trainer = stub(beta=0.25)
    odds = ORPOTrainer.odds_ratio_loss(trainer, means[:B], means[B:])[0]
    nll = -policy[:B].sum() / mask[:B].sum()  # TRL: cross-entropy over every chosen token
    theirs = nll - odds.mean()
    print(f"orpo: max |diff| {check(ours, theirs, policy):.2e}")


def rollout_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs (policy with gradient, old, reference), completion mask, advantages: 8 rows of 7."""
    g = torch.Generator().manual_seed(seed)
    n, c = 8, 7
    lengths = torch.randint(1, c + 1, (n,), generator=g)
    mask = (torch.arange(c)[None] < lengths[:, None]).float()
    logps = (-torch.rand(n, c, generator=g) * 2).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(n, c, generator=g)
    ref = logps.detach() + 0.3 * torch.randn(n, c, generator=g)
    return logps, old, ref, mask, torch.randn(n, generator=g)


def rollout_of(mask: torch.Tensor) -> Rollout:
    """A rollout of prompts of 2 tokens and completions under `mask` (ids do not matter: log-probs are stubbed)."""
    n, c = mask.shape
    return Rollout(
        sequences=torch.zeros(n, 2 + c, dtype=torch.long),
        attention_mask=torch.ones(n, 2 + c),
        completion_mask=mask,
        prompt_length=2,
        prompts=[""] * n,
        completions=[""] * n,
        completion_ids=[[]] * n,
    )


GRPO_CASES = {
    # name: (ftlab options, TRL settings)
    "grpo": ({"loss_level": "sequence"}, {"loss_type": "grpo", "importance_sampling_level": "token"}),
    "bnpo": ({"loss_level": "token"}, {"loss_type": "bnpo", "importance_sampling_level": "token"}),
    "dr_grpo": ({"loss_level": "dr_grpo"}, {"loss_type": "dr_grpo", "importance_sampling_level": "token"}),
    "dapo": (
        {"loss_level": "token", "global_tokens": True},
        {"loss_type": "dapo", "importance_sampling_level": "token"},
    ),
    "gspo": (
        {"loss_level": "sequence", "importance_level": "sequence"},
        {"loss_type": "grpo", "importance_sampling_level": "sequence"},
    ),
}


@pytest.mark.parametrize("kl_estimator", ["k3", "k3_unbiased"])
@pytest.mark.parametrize("name", list(GRPO_CASES))
def test_grpo_losses_match_trl(name: str, kl_estimator: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from trl import GRPOTrainer

    ours_options, trl_options = GRPO_CASES[name]
    logps, old, ref, mask, adv = rollout_inputs(3)
    n, c = mask.shape
    objective = GRPO(
        [FunctionReward(function=lambda completions, **_: [0.0] * len(completions))],
        max_new_tokens=c,
        beta=0.04,
        epsilon=0.2,
        epsilon_high=0.28,
        kl_estimator=kl_estimator,
        **ours_options,
    )
    monkeypatch.setattr(
        "ftlab.objectives.grpo.completion_logps", lambda model, rollout, **_: (logps, torch.zeros_like(logps), None)
    )
    rollout = rollout_of(mask)
    ours, _ = objective.training_step(StepContext(model=None, reference=None), GRPOBuffer(rollout, adv, old, ref))

    trainer = stub(
        beta=0.04,
        epsilon_low=0.2,
        epsilon_high=0.28,
        max_completion_length=c,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        use_vllm=False,
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=kl_estimator == "k3_unbiased", steps_per_generation=1),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        **trl_options,
    )
    inputs = {
        "prompt_ids": torch.zeros(n, 2, dtype=torch.long),
        "prompt_mask": torch.ones(n, 2),
        "completion_ids": torch.zeros(n, c, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    theirs = GRPOTrainer._compute_loss(trainer, None, inputs)
    print(f"{name}: max |diff| {check(ours, theirs, logps):.2e}")


def test_rloo_loss_matches_trl(monkeypatch: pytest.MonkeyPatch) -> None:
    """RLOO as TRL's RLOOTrainer: the clipped surrogate on the whole completion's ratio, one loss per sequence
    (the KL is in the reward, so none in the loss)."""
    from trl import RLOOTrainer

    logps, old, _, mask, adv = rollout_inputs(5)
    n, c = mask.shape
    objective = GRPO(
        [FunctionReward(function=lambda completions, **_: [0.0] * len(completions))],
        max_new_tokens=c,
        epsilon=0.2,
        epsilon_high=0.28,
        advantage="rloo",
        importance_level="sequence_sum",
        loss_level="sequence",
        kl_in_reward=True,
    )
    old = logps.detach() + 0.3 * (old - logps.detach())  # whole-sequence ratios near 1: some clip, some not
    monkeypatch.setattr(
        "ftlab.objectives.grpo.completion_logps", lambda model, rollout, **_: (logps, torch.zeros_like(logps), None)
    )
    rollout = rollout_of(mask)
    ours, metrics = objective.training_step(
        StepContext(model=None, reference=None), GRPOBuffer(rollout, adv, old, None)
    )
    assert 0 < metrics["clip_fraction"] < 1
    trainer = stub(
        epsilon_low=0.2,
        epsilon_high=0.28,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
    )
    inputs = {
        "prompt_ids": torch.zeros(n, 2, dtype=torch.long),
        "prompt_mask": torch.ones(n, 2),
        "completion_ids": torch.zeros(n, c, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_logps": (old * mask).sum(1),
    }
    theirs = RLOOTrainer._compute_loss(trainer, None, inputs)
    print(f"rloo: max |diff| {check(ours, theirs, logps):.2e}")
