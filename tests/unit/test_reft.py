"""LoReFT: positions worked out by hand, identity at start, disabled() is the base, R stays orthonormal."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftlab.errors import FTLabError
from ftlab.methods import LoReFT
from ftlab.methods.reft import LoReFTIntervention, positions


def test_positions_first_and_last_non_pad_tokens() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]])  # right- and left-padded rows
    where = positions(2, 1, 6, mask, None, 0, torch.device("cpu"))
    # row 0: tokens 0..4, first two 0, 1, last one 4; row 1: tokens at columns 2..5
    assert where.tolist() == [[1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 1]]
    # a cached decode step (1 new token, 5 past): its place is 5 in row 0, so neither first nor last
    step = torch.tensor([[1, 1, 1, 1, 1, 1]])
    assert positions(2, 1, 1, step, None, 5, torch.device("cpu")).tolist() == [[0]]
    # packed rows: position ids restart per example, so each example's first tokens are edited
    packed = torch.tensor([[0, 1, 2, 0, 1, 0]])
    assert positions(2, 0, 6, None, packed, 0, torch.device("cpu")).tolist() == [[1, 1, 0, 1, 1, 1]]


def test_intervention_is_the_formula() -> None:
    torch.manual_seed(0)
    iv = LoReFTIntervention(d=6, r=2)
    with torch.no_grad():
        iv.learned.weight.normal_()
        iv.learned.bias.normal_()
    h = torch.randn(3, 6)
    R, W, b = iv.rotate.weight, iv.learned.weight, iv.learned.bias
    expected = h + (h @ W.T + b - h @ R.T) @ R  # h + Rᵀ(W h + b - R h), row-wise
    assert torch.allclose(iv(h), expected, atol=1e-6)
    assert torch.allclose(R @ R.T, torch.eye(2), atol=1e-6)


@pytest.fixture
def model(tiny_llama):
    return tiny_llama.load_model(AutoModelForCausalLM).eval()


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def test_identity_at_start_and_disabled_is_base(tiny_llama, model) -> None:
    base = tiny_llama.load_model(AutoModelForCausalLM).eval()
    method = LoReFT(r=4, first=3, last=2)
    method.apply(model)
    ids = torch.randint(3, 500, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    assert torch.allclose(_logits(model, ids, mask), _logits(base, ids, mask), atol=1e-6)  # W = R, b = 0
    with torch.no_grad():
        for p in method.trainable_parameters(model).values():
            p.add_(0.3 * torch.randn_like(p))
    assert not torch.allclose(_logits(model, ids, mask), _logits(base, ids, mask))
    with method.disabled(model) as ref:
        assert torch.equal(_logits(ref, ids, mask), _logits(base, ids, mask))


def test_cached_generation_edits_the_same_positions_as_a_full_pass(model) -> None:
    method = LoReFT(r=4, first=4)
    method.apply(model)
    with torch.no_grad():
        for p in method.trainable_parameters(model).values():
            p.add_(0.3 * torch.randn_like(p))
    ids = torch.randint(3, 500, (1, 8))
    mask = torch.ones_like(ids)
    full = _logits(model, ids, mask)
    with torch.no_grad():
        head = model(input_ids=ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
        step = model(input_ids=ids[:, 6:7], attention_mask=mask[:, :7], past_key_values=head.past_key_values)
    assert torch.allclose(step.logits[:, -1], full[:, 6], atol=1e-5)


def test_rotation_keeps_orthonormal_rows_under_adamw_with_weight_decay(model) -> None:
    method = LoReFT(r=4, first=3)
    method.apply(model)
    optimizer = torch.optim.AdamW(method.param_groups(model), lr=0.05, weight_decay=0.1)
    ids = torch.randint(3, 500, (2, 9))
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    interventions = [m for m in model.modules() if isinstance(m, LoReFTIntervention)]
    assert len(interventions) == 2
    for iv in interventions:
        R = iv.rotate.weight.detach()
        assert (R @ R.T - torch.eye(4)).abs().max() < 1e-5


def test_parameter_count_on_the_tiny_model(model) -> None:
    method = LoReFT(r=4, layers=[-1])
    method.apply(model)
    assert sum(p.numel() for p in method.trainable_parameters(model).values()) == 2 * 4 * 32 + 4


def test_bad_settings_are_one_sentence(model) -> None:
    with pytest.raises(FTLabError, match="out of range"):
        LoReFT(layers=[5]).apply(model)
    with pytest.raises(FTLabError, match="positions"):
        LoReFT(first=0, last=0)
    with pytest.raises(FTLabError, match="cannot merge"):
        LoReFT().merge(model)
    assert not LoReFT(last=2).supports_packing and LoReFT().supports_packing
