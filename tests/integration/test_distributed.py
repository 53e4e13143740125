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

from ftlab.cli import FTLabCLI
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
    ]
    launch(spec, tmp)
    for name, method, objective, data in (("lora_sft", "lora", "sft", sft), ("lora_dpo", "lora", "dpo", pairs)):
        cells.run_cell(cell(f"single_{name}", "single", method, objective, data, batch=8), tmp)
    return tmp


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


METHODS = [
    "full",
    "freeze",
    "gradual_unfreeze",
    "lora",
    "qlora",
    "adapter_sequential",
    "adapter_parallel",
    "adapter_hybrid",
    "prefix",
    "prompt",
    "feature_extraction",
    "reft",
]
OBJECTIVES = ["sft", "dpo", "reward", "classification", "grpo", "ppo"]


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
