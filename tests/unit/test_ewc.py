"""EWC and L2-SP math on hand-computed numbers, the old data EWC refuses, the online-EWC Fisher file
gathered from shards and cut into shards again; the text datamodule labels every token."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from ftlab import runfolder
from ftlab.data import PreferenceDataModule, PromptDataModule, SFTDataModule
from ftlab.data.text import TextDataModule
from ftlab.errors import FTLabError
from ftlab.objectives import DPO, GRPO, PPO, SFT
from ftlab.regularizers import EWC, L2SP
from ftlab.regularizers.ewc import FISHER_FILE, consolidate, empirical_fisher, quadratic_penalty
from ftlab.regularizers.fisher_estimate import FisherEstimate, gathered, placed
from ftlab.rewards import FunctionReward, TokenShare
from tests.conftest import REPO

ASSETS = REPO / "ftlab" / "assets"


def ewc_with(anchors: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor], strength: float, tmp: Path) -> EWC:
    text = tmp / "old.txt"
    text.write_text("old text")
    reg = EWC(data=str(text), strength=strength)
    reg.anchors.set(anchors)
    reg.fisher.set(fisher)
    return reg


def test_penalty_is_zero_at_the_anchors(tmp_path: Path) -> None:
    theta = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    reg = ewc_with({"layer.w": theta.detach().clone()}, {"layer.w": torch.tensor([5.0, 1.0, 2.0])}, 10.0, tmp_path)
    penalty = reg.penalty(nn.Module(), {"layer.w": theta})
    penalty.backward()
    assert penalty.item() == 0.0 and torch.equal(theta.grad, torch.zeros(3))


def test_penalty_and_gradient_by_hand(tmp_path: Path) -> None:
    # θ = [1, 2, −1], θ* = [0.5, 2, 0], F = [2, 3, 0.5], λ = 4
    # penalty = λ/2 · Σ F (θ − θ*)² = 2 · (2·0.25 + 3·0 + 0.5·1) = 2.0
    # gradient = λ F (θ − θ*) = 4 · [2·0.5, 3·0, 0.5·(−1)] = [4, 0, −2]
    theta = nn.Parameter(torch.tensor([1.0, 2.0, -1.0]))
    reg = ewc_with({"w": torch.tensor([0.5, 2.0, 0.0])}, {"w": torch.tensor([2.0, 3.0, 0.5])}, 4.0, tmp_path)
    penalty = reg.penalty(nn.Module(), {"w": theta})
    penalty.backward()
    assert penalty.item() == pytest.approx(2.0)
    assert torch.allclose(theta.grad, torch.tensor([4.0, 0.0, -2.0]))


def test_penalty_backward_matches_autograd_of_the_formula() -> None:
    # the penalty's hand-written backward against torch's numerical gradient
    p = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64, requires_grad=True)
    anchor, fisher = torch.tensor([0.1, 0.0, 2.5], dtype=torch.float64), torch.tensor([1.0, 0.2, 3.0])
    assert torch.autograd.gradcheck(lambda q: quadratic_penalty({"w": q}, {"w": anchor}, {"w": fisher}).double(), (p,))


def test_l2sp_is_ewc_with_unit_fisher() -> None:
    # θ = [1, 2], θ* = [0, 0], λ = 0.5: penalty = 0.25 · (1 + 4) = 1.25, gradient = λ (θ − θ*) = [0.5, 1]
    theta = nn.Parameter(torch.tensor([1.0, 2.0]))
    reg = L2SP(strength=0.5)
    assert reg.name == "l2sp" and not reg.callbacks()[0].regularizer.uses_fisher
    reg.anchors.set({"w": torch.zeros(2)})
    penalty = reg.penalty(nn.Module(), {"w": theta})
    penalty.backward()
    assert penalty.item() == pytest.approx(1.25)
    assert torch.allclose(theta.grad, torch.tensor([0.5, 1.0]))


def test_empirical_fisher_of_logistic_regression_by_hand() -> None:
    # p(y=1|x) = σ(w·x + b) at w = 0, b = 0: ∂NLL/∂w = (σ − y) x = (0.5 − y) x, ∂NLL/∂b = 0.5 − y,
    # so every squared factor (0.5 − y)² is 0.25. x₁ = [1, 2] (y=1), x₂ = [3, −1] (y=0):
    # F_w = 0.25 · mean([1, 4], [9, 1]) = [1.25, 0.625], F_b = 0.25.
    model = nn.Linear(2, 1)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    xs = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    ys = torch.tensor([1.0, 0.0])

    def nll(i: int) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(model(xs[i]).squeeze(), ys[i])

    fisher = empirical_fisher(dict(model.named_parameters()), (lambda i=i: nll(i) for i in range(2)))
    assert torch.allclose(fisher["weight"], torch.tensor([[1.25, 0.625]]))
    assert torch.allclose(fisher["bias"], torch.tensor([0.25]))
    assert model.weight.grad is None and model.weight.requires_grad  # state restored


def test_empirical_fisher_of_a_frozen_parameter_and_its_state() -> None:
    # linear-Gaussian: NLL = ½ (y − w x)², ∂/∂w = −(y − w x) x; w = 1, (x, y) = (2, 1) and (1, 3):
    # gradients −(1 − 2)·2 = 2 and −(3 − 1)·1 = −2, so F = (4 + 4) / 2 = 4
    w = nn.Parameter(torch.tensor(1.0), requires_grad=False)
    data = [(2.0, 1.0), (1.0, 3.0)]
    fisher = empirical_fisher({"w": w}, (lambda x=x, y=y: 0.5 * (y - w * x) ** 2 for x, y in data))
    assert fisher["w"].item() == pytest.approx(4.0) and not w.requires_grad


def test_online_ewc_accumulates_decayed_fisher() -> None:
    # γ = 0.5: γ·[2, 4] + [1, 1] = [2, 3]
    out = consolidate({"w": torch.tensor([2.0, 4.0])}, {"w": torch.tensor([1.0, 1.0])}, gamma=0.5)
    assert torch.equal(out["w"], torch.tensor([2.0, 3.0]))
    with pytest.raises(FTLabError, match="other parameters"):
        consolidate({"v": torch.ones(2)}, {"w": torch.ones(2)}, gamma=0.5)


def test_state_restores_into_a_fresh_regularizer(tmp_path: Path) -> None:
    # a resumed run: the checkpoint's anchors and Fisher arrive before the callback could set them
    saved = ewc_with({"a.b": torch.tensor([1.0])}, {"a.b": torch.tensor([2.0])}, 1.0, tmp_path).state_dict()
    assert set(saved) == {"anchors.a/b", "fisher.a/b"}
    fresh = ewc_with({}, {}, 1.0, tmp_path)
    assert not fresh.ready
    fresh.load_state_dict(saved, strict=False)
    assert fresh.ready and torch.equal(fresh.anchors.get()["a.b"], torch.tensor([1.0]))


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FTLabError, match=r"old data file .* not found"):
        EWC(data=str(tmp_path / "missing.txt"))
    with pytest.raises(FTLabError, match="strength"):
        L2SP(strength=-1.0)


def test_text_datamodule_labels_every_token_in_rows_of_max_length(tokenizer, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\r\n\r\nA second paragraph, with more words in it.\n")
    ids = [tokenizer.bos_token_id]  # each document begins with BOS, as prompts do
    ids += tokenizer("The quick brown fox jumps over the lazy dog.\n\n", add_special_tokens=False)["input_ids"]
    ids += tokenizer("A second paragraph, with more words in it.\n", add_special_tokens=False)["input_ids"]
    ids.append(tokenizer.eos_token_id)
    dm = TextDataModule(train=str(text), max_length=8, batch_size=64)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    assert [len(c.input_ids) for c in dm.train_set[:-1]] == [8] * (len(dm.train_set) - 1)
    flat = [t for c in dm.train_set for t in c.input_ids]
    assert flat == ids[: len(flat)] and len(ids) - len(flat) < 2  # a one-token tail predicts nothing: dropped
    batch = dm.collate(dm.train_set)
    real = batch.attention_mask.bool()
    assert torch.equal(batch.labels[real], batch.input_ids[real]) and (batch.labels[~real] == -100).all()
    assert batch.num_loss_tokens == batch.num_tokens == len(flat)


def test_text_holdout_tail_is_the_end_of_the_stream(tokenizer, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"word{i}" for i in range(200)))
    dm = TextDataModule(train=str(text), max_length=16, holdout_tail=0.25)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    n = len(dm.train_set) + len(dm.val_set)
    assert len(dm.val_set) == round(n * 0.25)
    whole = TextDataModule(train=str(text), max_length=16)
    whole.tokenizer = tokenizer
    whole.setup("fit")
    assert [c.input_ids for c in whole.train_set] == [c.input_ids for c in dm.train_set + dm.val_set]


def test_text_holdout_tail_with_a_selection_split_drawn_before_the_tail(tokenizer, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"word{i}" for i in range(200)))

    def setup(**options) -> TextDataModule:
        dm = TextDataModule(train=str(text), max_length=16, holdout_tail=0.25, **options)
        dm.tokenizer = tokenizer
        dm.setup("fit")
        return dm

    plain, tuned = setup(), setup(selection_fraction=0.2)
    scored = setup(selection_fraction=0.2, evaluate_on="selection")
    ids = lambda chunks: [tuple(c.input_ids) for c in chunks]  # noqa: E731
    assert ids(tuned.val_set) == ids(plain.val_set)  # the tail (the reported split) does not move
    assert len(tuned.selection_set) == round(len(plain.train_set) * 0.2)
    assert sorted(ids(tuned.selection_set) + ids(tuned.train_set)) == sorted(ids(plain.train_set))
    assert ids(scored.val_set) == ids(tuned.selection_set) and ids(scored.train_set) == ids(tuned.train_set)


def reward() -> list[FunctionReward]:
    return [FunctionReward(TokenShare(token_id=11))]


@pytest.mark.parametrize(
    "objective", [lambda: GRPO(rewards=reward()), lambda: PPO(rewards=reward())], ids=["grpo", "ppo"]
)
def test_prompt_data_is_refused_as_old_data_of_online_rl(objective, tmp_path: Path) -> None:
    # the batch kinds match (PromptBatch), but a rollout objective has no loss on prompts alone
    run = SimpleNamespace(objective=objective())
    prompts = EWC(data=PromptDataModule(train=str(ASSETS / "synthetic_prompts.jsonl")))
    name = run.objective.name
    with pytest.raises(FTLabError, match=rf"PromptDataModule yields PromptBatch .* online-RL objective \({name}\)"):
        prompts.check(run)
    text = tmp_path / "old.txt"
    text.write_text("old text")
    EWC(data=str(text)).check(run)  # text and SFT data are scored with the LM loss: accepted
    EWC(data=SFTDataModule(train=str(text))).check(run)


def test_dpo_with_a_precomputed_reference_refuses_old_pairs() -> None:
    pairs = EWC(data=PreferenceDataModule(train=str(ASSETS / "preference_pairs.jsonl")))
    pairs.check(SimpleNamespace(objective=DPO()))  # a live reference scores any pair
    with pytest.raises(FTLabError, match="precompute_reference: false"):
        pairs.check(SimpleNamespace(objective=DPO(precompute_reference=True)))
    with pytest.raises(FTLabError, match="objective SFT cannot score"):
        pairs.check(SimpleNamespace(objective=SFT()))


@contextmanager
def fake_world(rank: int, size: int) -> Iterator[DeviceMesh]:
    """This process as rank `rank` of `size`, on torch's fake process group: collectives do not
    communicate (their results are placeholders of the right shape), local slicing is exact."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=size)
    try:
        yield init_device_mesh("cpu", (size,))
    finally:
        dist.destroy_process_group()


# F of a [5, 2] parameter; FSDP cuts dim 0 as torch.chunk does: rank 0 rows 0-2, rank 1 rows 3-4
WHOLE = torch.arange(1.0, 11.0).reshape(5, 2)


def test_online_fisher_file_holds_whole_tensors_under_sharding(tmp_path: Path) -> None:
    with fake_world(rank=0, size=2) as mesh:
        shard = distribute_tensor(WHOLE, mesh, [Shard(0)], src_data_rank=None)
        assert shard.to_local().shape == (3, 2)  # rank 0's rows
        reg = EWC(data=str(ASSETS / "wikitext2_sample.txt"))
        reg.anchors.set({"w": torch.zeros_like(shard)})
        reg.fisher.set({"w": shard})
        trainer = SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path))
        FisherEstimate(reg).on_fit_end(trainer, SimpleNamespace(method=SimpleNamespace(name="Full")))
        assert gathered({"w": shard}, keep=False) == {}  # other ranks join the gathering and keep nothing
    saved = runfolder.load_weights(tmp_path / FISHER_FILE)
    assert saved["w"].shape == (5, 2)  # the gathered tensor, not rank 0's [3, 2] shard


def test_whole_fisher_is_cut_like_the_parameter(tmp_path: Path) -> None:
    # plain parameters (one process, DDP) take the whole tensor
    plain = placed({"w": WHOLE}, {"w": torch.zeros(5, 2)}, whole=True)["w"]
    assert torch.equal(plain, WHOLE)
    with pytest.raises(FTLabError, match=r"Fisher of w has shape \[3, 2\], this run's parameter \[5, 2\]"):
        placed({"w": WHOLE[:3]}, {"w": torch.zeros(5, 2)}, whole=True)
    with fake_world(rank=1, size=2) as mesh:
        param = distribute_tensor(torch.zeros(5, 2), mesh, [Shard(0)], src_data_rank=None)
        mine = placed({"w": WHOLE}, {"w": param}, whole=True)["w"]
        assert isinstance(mine, DTensor) and mine.placements == (Shard(0),)
        assert torch.equal(mine.to_local(), torch.tensor([[7.0, 8.0], [9.0, 10.0]]))  # rows 3-4
        # a cache entry holds the local shard already: copied as it is
        again = placed({"w": torch.tensor([[7.0, 8.0], [9.0, 10.0]])}, {"w": param})["w"]
        assert torch.equal(again.to_local(), mine.to_local())
