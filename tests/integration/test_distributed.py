"""DDP and FSDP2 with 2 CPU processes (gloo), run as one script through `subprocess` (Lightning's DDP
launcher re-runs the command for each rank, which must not be pytest).

Equivalences, each with every step's batch made of the whole training set so that the union of the
ranks' batches is the single process's batch whatever the sampler's order:
- DDP (2 × 4 rows) = 1 process (8 rows): SFT + LoRA and DPO + LoRA. The SFT rows differ in length and in
  answer tokens (one long answer, seven short), so the ranks always hold unequally many loss tokens: a
  mean of the ranks' own token means is off by about 6e-2 here; the global token mean passes (1e-6).
- FSDP2 = DDP for Full and LoRA, on the same rows.
Tolerance 1e-5 absolute on weights after 3 AdamW steps at lr 1e-2: the ranks sum gradients in another
order than one process does (float32 rounding, about 1e-7 relative per step, amplified by AdamW's
normalisation where a gradient is near zero).

Resume, for SFT + LoRA (dropout 0.1), SFT + Full and (FSDP) SFT + Full + EWC, 5 steps of 2 rows per rank (2
steps an epoch): an uninterrupted run; a run in which rank 0 alone gets SIGUSR1 after step 3 (mid-epoch:
ftlab's Preemption stops every rank and saves last.ckpt); a second launch resumes it with ckpt_path="last".
The resumed run starts from the checkpoint's weights bit for bit, and its losses and final weights must equal
the uninterrupted run's bit for bit too (the same ranks reduce in the same order on CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ftlab.callbacks.forgetting import BUNDLED_TEXT
from ftlab.cli import FTLabCLI
from ftlab.regularizers.ewc import FISHER_FILE
from tests import catalogue
from tests.conftest import REPO, write_jsonl
from tests.integration import distributed_cells as cells

SCRIPT = Path(cells.__file__)
PAIRS = REPO / "ftlab" / "assets" / "preference_pairs.jsonl"
PROMPTS = REPO / "ftlab" / "assets" / "synthetic_prompts.jsonl"
TOL = 1e-5


def unequal_rows(backbone: Any, tmp: Path) -> Path:
    """8 SFT rows of unequal lengths: seven short answers and one long one. However the sampler deals them
    out (4 per rank), the rank with the long answer holds more loss tokens than the other, so a mean of
    the ranks' own token means differs from the global token mean in every step."""
    from ftlab.data import SFTDataModule

    rows = [{"instruction": f"Count to {i}.", "output": "one"} for i in range(7)]
    rows.append({"instruction": "Count to nine.", "output": " ".join(["one"] * 9)})
    path = write_jsonl(tmp / "sft.jsonl", rows)
    dm = SFTDataModule(train=str(path), batch_size=8, max_length=64, val_fraction=0.0)
    dm._tokenizer = backbone.load_tokenizer()
    dm.setup("fit")
    counts = sorted(sum(t != -100 for t in ex.labels) for ex in dm.train_set)
    assert len(counts) == 8 and counts[-1] > 4 * counts[-2], f"the long answer does not dominate: {counts}"
    assert len({len(ex.input_ids) for ex in dm.train_set}) > 1
    return path


def cell(name: str, strategy: str, method: str, objective: str, data: Path, batch: int = 4, steps: int = 3) -> dict:
    return {
        "name": name,
        "strategy": strategy,
        "method": method,
        "objective": objective,
        "steps": steps,
        "batch_size": batch,
        "data": str(data),
    }


STEPS, STOP = 5, 3
RESUMED = {"ddp_lora": "ddp", "ddp_full": "ddp", "fsdp_lora": "fsdp", "fsdp_full": "fsdp", "fsdp_ewc": "fsdp"}


def resume_cells(sft: Path) -> tuple[list[dict], list[dict]]:
    """(the uninterrupted and the stopped runs, the resumed runs: a later launch, in the stopped runs' folders)."""
    first, second = [], []
    for name, kind in RESUMED.items():
        base = {**cell(name, kind, name.split("_")[1], "sft", sft, batch=2, steps=STEPS), "checkpoint": True}
        base.update({"method": "full", "ewc": 100.0} if name.endswith("ewc") else {"dropout": 0.1})
        first += [{**base, "name": f"{name}_straight"}, {**base, "name": f"{name}_stopped", "signal_at": STOP}]
        second.append({**base, "name": f"{name}_resumed", "root": f"{name}_stopped", "ckpt_path": "last"})
    return first, second


def launch(spec: list[dict], out: Path) -> None:
    (out / "spec.json").write_text(json.dumps(spec))
    # a process group left by another test (MASTER_PORT, ranks) must not leak into the launched ranks
    leaked = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK"}
    env = {**{k: v for k, v in os.environ.items() if k not in leaked}, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out / "spec.json"), str(out)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def ranks(out: Path, name: str) -> list[dict]:
    return [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in (0, 1)]


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b) and a
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < TOL, f"weights differ by {worst}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ftlab.models import TinyBackbone

    tmp = tmp_path_factory.mktemp("distributed")
    backbone = TinyBackbone(config=cells.LLAMA, vocab_size=512)
    backbone.load_model(cells.objective("sft").model_class)  # build the cache before two ranks read it
    sft = unequal_rows(backbone, tmp)
    quick = [
        "--config",
        "experiments/quickstart.yaml",
        "--config",
        "experiments/methods/lora.yaml",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--data.init_args.limit=16",
    ]
    FTLabCLI(args=[*quick, f"--trainer.default_root_dir={tmp / 'warm'}"], run=False).model.configure_model()
    pairs = write_jsonl(tmp / "pairs.jsonl", [json.loads(line) for line in PAIRS.read_text().splitlines()[:8]])
    spec = [
        cell("ddp_lora_sft", "ddp", "lora", "sft", sft),
        cell("ddp_full_sft", "ddp", "full", "sft", sft),
        cell("fsdp_lora_sft", "fsdp", "lora", "sft", sft),
        cell("fsdp_full_sft", "fsdp", "full", "sft", sft),
        cell("ddp_lora_dpo", "ddp", "lora", "dpo", pairs),
        cell("ddp_lora_grpo", "ddp", "lora", "grpo", PROMPTS, batch=2, steps=2),
        cell("ddp_gradual_sft", "ddp", "gradual_unfreeze", "sft", sft),
        cell("ddp_unused_gradual_sft", "ddp_unused", "gradual_unfreeze", "sft", sft),
        cell("fsdp_qlora_sft", "fsdp", "qlora", "sft", sft),
        *[
            {**cell(f"{kind}_{m}_ewc", kind, m, "sft", sft), "ewc": 100.0}
            for kind in ("ddp", "fsdp")
            for m in ("full", "lora")
        ],
        *[
            {"name": f"cli_{kind}", "args": [*quick, "--config", f"experiments/base/trainer_{kind}.yaml"]}
            for kind in ("ddp", "fsdp")
        ],
        *resume_cells(sft)[0],
        online_ewc("fsdp", sft),
    ]
    launch(spec, tmp)
    for name, method, objective, data in (("lora_sft", "lora", "sft", sft), ("lora_dpo", "lora", "dpo", pairs)):
        cells.run_cell(cell(f"single_{name}", "single", method, objective, data, batch=8), tmp)
    cells.run_cell(online_ewc("single", sft), tmp)
    return tmp


def online_ewc(kind: str, sft: Path) -> dict:
    """Task A of a chain: SFT + Full, online EWC on the bundled text, 2 steps; it writes ewc_fisher.safetensors."""
    return {
        **cell(f"{kind}_full_ewc_online", kind, "full", "sft", sft, steps=2),
        "ewc": 100.0,
        "ewc_text": str(BUNDLED_TEXT),
    }


@pytest.fixture(scope="module")
def resumed(runs: Path) -> Path:
    # a fresh launch, as after a preemption; and task B of an online-EWC chain carrying FSDP task A's Fisher
    task_b = {**online_ewc("fsdp", runs / "sft.jsonl"), "name": "fsdp_ewc_task_b", "previous": "fsdp_full_ewc_online"}
    launch([*resume_cells(runs / "sft.jsonl")[1], {**task_b, "gamma": 0.5}], runs)
    return runs


def weights(out: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(out / f"{name}.safetensors")


@pytest.mark.parametrize("name", ["lora_sft", "lora_dpo"])
def test_ddp_equals_one_process_with_the_doubled_batch(runs: Path, name: str) -> None:
    assert_close(weights(runs, f"ddp_{name}"), weights(runs, f"single_{name}"))
    single = json.loads((runs / f"single_{name}.rank0.json").read_text())
    assert all(r["steps"] == single["steps"] == 3 for r in ranks(runs, f"ddp_{name}"))
    if name == "lora_sft":  # every rank logs the global token mean: the single process's loss
        for report in ranks(runs, f"ddp_{name}"):
            assert report["metrics"]["train/loss"] == pytest.approx(single["metrics"]["train/loss"], rel=1e-5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_equals_ddp(runs: Path, method: str) -> None:
    sharded, replicated = weights(runs, f"fsdp_{method}_sft"), weights(runs, f"ddp_{method}_sft")
    assert_close(sharded, replicated)
    if method == "full":  # the gathered checkpoint holds every weight, whole
        assert len(sharded) == len(weights(runs, "ddp_full_sft")) and all(v.ndim >= 1 for v in sharded.values())


@pytest.mark.parametrize("method", ["full", "lora"])
def test_ewc_under_fsdp_equals_ddp(runs: Path, method: str) -> None:
    """The penalty, anchors and Fisher work on sharded parameters, embeddings and head included."""
    assert_close(weights(runs, f"fsdp_{method}_ewc"), weights(runs, f"ddp_{method}_ewc"))
    penalties = [r["metrics"]["train/reg/ewc"] for r in ranks(runs, f"fsdp_{method}_ewc")]
    assert penalties[0] > 0 and penalties[0] == pytest.approx(penalties[1], rel=1e-6)
    assert penalties[0] == pytest.approx(ranks(runs, f"ddp_{method}_ewc")[0]["metrics"]["train/reg/ewc"], rel=1e-4)
    plain, regularized = weights(runs, f"ddp_{method}_sft"), weights(runs, f"ddp_{method}_ewc")
    assert any(not torch.equal(plain[k], regularized[k]) for k in plain), "the penalty changed nothing"


def test_grpo_under_ddp_agrees_across_ranks(runs: Path) -> None:
    first, second = ranks(runs, "ddp_lora_grpo")
    assert first["steps"] == second["steps"] == 2
    assert first["checksum"] == second["checksum"], "the ranks' weights diverged"
    assert first["metrics"]["train/reward_std"] > 0 and first["metrics"]["train/clip_fraction"] >= 0
    for key in ("train/reward", "train/kl", "train/loss"):
        assert key in first["metrics"] and first["metrics"][key] == pytest.approx(second["metrics"][key], abs=1e-6)


def test_gradual_unfreezing_under_ddp_needs_unused_parameter_search(runs: Path) -> None:
    refused = ranks(runs, "ddp_gradual_sft")
    assert all("ddp_find_unused_parameters_true" in r["refused"] for r in refused)
    trained = ranks(runs, "ddp_unused_gradual_sft")
    assert all(r.get("steps") == 3 for r in trained)
    assert weights(runs, "ddp_unused_gradual_sft")


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_the_shipped_trainer_configs_run_two_processes(runs: Path, kind: str) -> None:
    for report in ranks(runs, f"cli_{kind}"):
        assert report["steps"] == 2 and report["world_size"] == 2
    assert (runs / f"cli_{kind}" / "DONE").exists() and (runs / f"cli_{kind}" / "checkpoints" / "last.ckpt").exists()


def test_qlora_under_fsdp_is_refused_with_the_reason(runs: Path) -> None:
    for report in ranks(runs, "fsdp_qlora_sft"):
        assert report["refused"] == "method QLoRA does not support sharded training (ModelParallelStrategy)"


@pytest.mark.parametrize("name", ["ddp_lora", "ddp_full", "fsdp_lora", "fsdp_full", "fsdp_ewc"])
def test_a_resumed_run_logs_the_uninterrupted_losses_and_ends_on_its_weights(resumed: Path, name: str) -> None:
    for straight, again in zip(ranks(resumed, f"{name}_straight"), ranks(resumed, f"{name}_resumed"), strict=True):
        assert sorted(map(int, again["losses"])) == list(range(STOP + 1, STEPS + 1))
        for step, loss in again["losses"].items():  # bit for bit
            assert loss == straight["losses"][step], (name, step, loss, straight["losses"][step])
    end, again = weights(resumed, f"{name}_straight"), weights(resumed, f"{name}_resumed")
    assert set(end) == set(again) and all(torch.equal(end[k], again[k]) for k in end)


@pytest.mark.parametrize("name", list(RESUMED))
def test_a_preempted_run_stops_on_every_rank_and_resumes_from_its_checkpoint(resumed: Path, name: str) -> None:
    straight, stopped = ranks(resumed, f"{name}_straight"), ranks(resumed, f"{name}_stopped")
    for before, report in zip(straight, stopped, strict=True):  # rank 0 alone got the signal; both stopped
        assert report["steps"] == STOP and all(before["losses"][k] == v for k, v in report["losses"].items())
    assert not (resumed / f"{name}_stopped" / "checkpoints" / "last-v1.ckpt").exists()  # "last" is Preemption's
    assert all(r["steps"] == STEPS for r in ranks(resumed, f"{name}_resumed"))
    # the resumed run trains from the stopped run's weights, bit for bit: under FSDP the strategy loads them
    start, end = weights(resumed, f"{name}_resumed.start"), weights(resumed, f"{name}_stopped")
    assert set(start) == set(end) and all(torch.equal(start[k], end[k]) for k in end)
    twin = name.replace("fsdp", "ddp")
    if twin != name and twin in RESUMED:  # FSDP restores weights and optimizer as DDP does: the same losses
        for ours, theirs in zip(ranks(resumed, f"{name}_resumed"), ranks(resumed, f"{twin}_resumed"), strict=True):
            assert ours["losses"] == pytest.approx(theirs["losses"], rel=1e-6)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_fsdp_checkpoint_holds_the_trainable_weights_whole_and_nothing_else(runs: Path, method: str) -> None:
    def load(kind: str) -> dict:
        path = runs / f"{kind}_{method}_stopped" / "checkpoints" / "last.ckpt"
        return torch.load(path, map_location="cpu", weights_only=True)

    sharded, replicated = load("fsdp"), load("ddp")
    state, end = sharded["state_dict"], weights(runs, f"fsdp_{method}_stopped")  # saved at the run's last step
    assert set(state) == set(end) == set(replicated["state_dict"])
    for key, value in state.items():  # plain tensors of the whole parameter's shape, not shards
        assert type(value) is torch.Tensor and value.shape == replicated["state_dict"][key].shape, key
        assert torch.equal(value, end[key]), key
    if method == "lora":  # the adapters only: no frozen base weight
        assert all(".lora_A." in k or ".lora_B." in k for k in state) and sum(v.numel() for v in state.values()) < 10**4
    moments = [(*m["exp_avg"].shape, *m["exp_avg_sq"].shape) for m in sharded["optimizer_states"][0]["state"].values()]
    assert sorted(moments) == sorted((*v.shape, *v.shape) for v in state.values())  # whole, one per trainable weight


def test_fsdp_resume_keeps_the_ewc_anchors_and_fisher(resumed: Path) -> None:
    """Saved whole (gathered from the shards) and cut into the resumed run's shards: rank 1 keeps its own."""
    straight = weights(resumed, "fsdp_ewc_straight.regularizers")
    again = weights(resumed, "fsdp_ewc_resumed.regularizers")
    trained = weights(resumed, "fsdp_ewc_straight")
    assert {k.split(".")[1] for k in straight} == {"anchors", "fisher"} and len(straight) == 2 * len(trained)
    for key, value in straight.items():  # "0.anchors.model/embed_tokens/weight" is model.model.embed_tokens.weight's
        assert value.shape == trained["model." + key.split(".", 2)[2].replace("/", ".")].shape, key
        assert torch.equal(again[key], value), key


def test_online_ewc_fisher_under_fsdp_is_whole_and_equals_one_process(runs: Path) -> None:
    sharded = load_file(runs / "fsdp_full_ewc_online" / FISHER_FILE)
    single = load_file(runs / "single_full_ewc_online" / FISHER_FILE)
    trained = weights(runs, "fsdp_full_ewc_online")
    assert set(sharded) == set(single) == {k.removeprefix("model.") for k in trained}
    for name, fisher in sharded.items():  # every parameter's full shape: gathered from both ranks' shards
        assert fisher.shape == trained["model." + name].shape, name
    assert all(f.sum() > 0 for f in sharded.values())
    worst = max((sharded[k] - single[k]).abs().max().item() for k in single)
    assert worst < TOL, f"the Fisher under FSDP differs from one process's by {worst}"


def test_online_ewc_under_fsdp_carries_the_previous_runs_whole_fisher(resumed: Path) -> None:
    """Task B reads A's file (whole tensors) and cuts its shards from it: F_B = γ·F_A + F_new, gathered whole at
    its end. B starts from the same tiny model as A (not A's end weights), so F_new = F_A and F_B = 1.5·F_A."""
    task_a = load_file(resumed / "single_full_ewc_online" / FISHER_FILE)
    task_b = load_file(resumed / "fsdp_ewc_task_b" / FISHER_FILE)
    assert set(task_b) == set(task_a) and all(task_b[k].shape == task_a[k].shape for k in task_a)
    worst = max((task_b[k] - 1.5 * task_a[k]).abs().max().item() for k in task_a)
    assert worst < TOL, f"F_B differs from 0.5·F_A + F_new by {worst}"


METHODS = sorted(catalogue.METHODS)
OBJECTIVES = sorted(catalogue.OBJECTIVES)


@pytest.mark.slow
def test_every_method_and_objective_trains_or_is_refused_under_ddp_and_fsdp(tmp_path: Path) -> None:
    """The capability table: each cell trains 2 steps that move its trainable weights, with the ranks in
    agreement, or is refused at setup."""
    from ftlab.models import TinyBackbone

    TinyBackbone(config=cells.LLAMA, vocab_size=512).load_model(cells.objective("sft").model_class)
    data = {
        "sft": REPO / "ftlab" / "assets" / "self_instruct_seed.jsonl",
        "dpo": PAIRS,
        "reward": PAIRS,
        "classification": write_jsonl(
            tmp_path / "labels.jsonl", [{"text": f"text number {i}", "label": i % 2} for i in range(16)]
        ),
        "grpo": PROMPTS,
        "ppo": PROMPTS,
    }
    spec = [
        cell(
            f"{s}-{m}-{o}",
            s if s == "fsdp" or m != "gradual_unfreeze" else "ddp_unused",
            m,
            o,
            data[o],
            batch=2,
            steps=2,
        )
        for s in ("ddp", "fsdp")
        for m in METHODS
        for o in OBJECTIVES
    ]
    launch(spec, tmp_path)
    for entry in spec:
        first, second = ranks(tmp_path, entry["name"])
        assert "error" not in first and "error" not in second, (entry["name"], first, second)
        m, o = cells.method(entry["method"]), cells.objective(entry["objective"])
        refusable = (not m.trains_backbone and not o.has_head) or (entry["strategy"] == "fsdp" and not m.supports_fsdp)
        if "refused" in first:  # refused at setup, on every rank, for a reason the capabilities declare
            assert first == second and refusable, (entry["name"], first)
        else:
            assert not refusable, f"{entry['name']} should have been refused"
            assert first["steps"] == second["steps"] == 2 and first["checksum"] == second["checksum"], entry["name"]
            # gradient steps moved the trainable weights: AdamW's first steps move a weight with a gradient by
            # about lr = 1e-2, while weight decay alone would move none by more than 2 · lr · 0.01 · |w| < 1e-3
            assert first["moved"] > 1e-3 and second["moved"] == first["moved"], (entry["name"], first["moved"])
