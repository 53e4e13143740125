"""DPO in ftlab: peak memory against SFT on the same tokens, and step time against TRL's DPOTrainer.

    python benchmarks/dpo.py            # every measurement, each in a fresh process; writes benchmarks/DPO.md
    python benchmarks/dpo.py --quick    # a short smoke run of every measurement; prints, writes nothing
    python benchmarks/dpo.py --child speed ftlab_dpo   # one measurement, printed as a RESULT json line

Setup shared by every contender: a Llama-shaped model built from config (`BACKBONE`, seed 0, float32,
sdpa attention) with ftlab's offline BPE tokenizer (vocab 2048, trained on the bundled instruction data),
LoRA r=8, alpha 16, no dropout, on every linear layer but the output head; AdamW (lr 5e-4, weight decay
0, no gradient clipping, constant rate); beta 0.1; 4 pairs per optimizer step. Data: HH-RLHF
harmless-base test (../shared/data) tokenized by ftlab's `HHRLHFDataModule` at max_length 256 (prompt
cut from the left to 128, answers from the right), then put in one seeded order that every contender
reads without shuffling: step k sees the same pairs, padded to the same width, everywhere.

Memory (one process per contender, `--child memory NAME`): ftlab DPO with 4 pairs per step (8 rows in
one forward pass, plus the reference pass with the adapters switched off) against ftlab SFT with LoRA on
the same 8 rows per step (chosen and rejected answers as SFT rows, the same labels), so both process the
same tokens. Two numbers per contender:
- peak live tensor bytes over one training step (forward, reference, backward, optimizer step), from
  torch.profiler's memory timeline (every CPU allocation and free, in order; the analogue of CUDA's
  `max_memory_allocated`, without allocator rounding), with the profiler's split by category at the peak;
- peak RSS delta: the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs
  after the data is read and before the model loads) minus its RSS at that reset, over the first steps
  (before the profiler starts). It adds the malloc arenas' slack, the checkpoint's mapped pages and
  library buffers, so it is the noisier number.
Weights, LoRA gradients and AdamW moments are the same bytes for DPO and SFT (no second model: the
reference is the model with its adapters off), so any difference is activations and temporaries.
Contenders: SFT, DPO, DPO with `precompute_reference: true` (the reference log-probs computed once
before training) and two measured proposals (subclasses in this file; ftlab itself is not changed):
`ftlab_dpo_reference_first`, the reference pass run before the policy pass, and `ftlab_dpo_proposed`,
reference first and the output head applied only at the labelled positions (`compact_answer_logps`).
The proposal is also timed in the speed section.

Speed (`--child speed NAME`): median seconds per optimizer step after warm-up, ftlab DPO through the
Lightning Trainer (a Callback records the time between consecutive `on_train_batch_end`, and the time
from `on_train_batch_start` to `on_train_batch_end`) against TRL's `DPOTrainer` (a TrainerCallback:
`on_step_end` to `on_step_end`, and `on_step_begin` to `on_step_end`), both loaded from the same
`save_pretrained` folder, LoRA through `peft_config` on TRL's side, fp32 (`bf16=False`), no evaluation,
no checkpointing, no progress bar, no gradient accumulation, dataloader workers 0, `report_to="none"`.
TRL gets ftlab's tokenized pairs (a subclass skips TRL's own tokenization, which would cut differently:
TRL keeps the start of prompt + answer), read in the same order (`train_sampling_strategy="sequential"`).
Both compute the reference log-probs every step with the adapters disabled; TRL's default
`gradient_checkpointing=True` is turned off for the like-for-like row and measured as an extra row.
The step-0 mean log-probabilities of both sides are reported: equal values show the same weights, tokens
and labels. Contenders alternate over `--rounds` rounds (the machine is shared and noisy); the table
gives the median over rounds of each round's median step time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
BACKBONE: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}
VOCAB = 2048
SEED = 0
MAX_LENGTH = 256
MAX_PROMPT_LENGTH = 128
PAIRS_PER_STEP = 4
BETA = 0.1
LR = 5e-4
LORA = {"r": 8, "alpha": 16.0, "dropout": 0.0}
MEMORY = ("ftlab_sft", "ftlab_dpo", "ftlab_dpo_precompute", "ftlab_dpo_reference_first", "ftlab_dpo_proposed")
SPEED = ("ftlab_dpo", "trl_dpo", "ftlab_dpo_proposed")
PAIRS_FILE: Path | None = None
"""Tokenized pairs in their order, written once by the parent process (None: each process tokenizes)."""
EXTRA_SPEED = ("trl_dpo_gradient_checkpointing",)
TOP_OPS = 14
CATEGORIES = ("parameter", "optimizer_state", "input", "temporary", "activation", "gradient", "autograd", "unknown")


# --------------------------------------------------------------------------- shared setup
def backbone() -> Any:
    from ftlab.models import TinyBackbone

    return TinyBackbone(config=BACKBONE, vocab_size=VOCAB, seed=SEED)


def datamodule(n_pairs: int, as_sft: bool = False) -> Any:
    """ftlab's HH-RLHF datamodule reading the first `n_pairs` of one seeded order, unshuffled.

    With `as_sft`, the same batches become SFT batches: 2B rows (chosen, then rejected), the same labels.
    With `PAIRS_FILE` set (the parent process tokenizes once for every child), the pairs are read from it."""
    import torch
    from torch.utils.data import DataLoader

    from ftlab.batches import PreferenceBatch, SFTBatch
    from ftlab.data import HHRLHFDataModule
    from ftlab.data.preference import PairExample

    class OrderedPairs(HHRLHFDataModule):
        def setup(self, stage: str) -> None:
            if self.train_set is not None:
                return
            if PAIRS_FILE is not None:
                rows = json.loads(PAIRS_FILE.read_text())[:n_pairs]
                self.train_set, self.val_set = [PairExample(**row) for row in rows], []
                return
            super().setup(stage)
            order = list(range(len(self.train_set)))
            random.Random(SEED).shuffle(order)
            self.train_set = [self.train_set[i] for i in order[:n_pairs]]
            for i, ex in enumerate(self.train_set):
                ex.index = i  # the key of the precomputed reference table
            self.stats["train_examples"] = len(self.train_set)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, collate_fn=self.collate)

    class OrderedPairsAsSFT(OrderedPairs):
        batch_type = SFTBatch

        def collate(self, examples: list[Any]) -> SFTBatch:
            b: PreferenceBatch = super().collate(examples)
            return SFTBatch(
                input_ids=b.input_ids,
                labels=b.labels,
                attention_mask=b.attention_mask,
                num_tokens=b.num_tokens,
                num_loss_tokens=int((b.labels != -100).sum()),
            )

    cls = OrderedPairsAsSFT if as_sft else OrderedPairs
    dm = cls(
        train=str(HH),
        max_length=MAX_LENGTH,
        max_prompt_length=MAX_PROMPT_LENGTH,
        batch_size=PAIRS_PER_STEP,
        seed=SEED,
    )
    dm.tokenizer = backbone().load_tokenizer()
    with torch.random.fork_rng(devices=[]):
        dm.setup("fit")
    return dm


def compact_answer_logps(model: Any, batch: Any) -> tuple[Any, Any]:
    """Summed answer log-probabilities with the output head and log-softmax applied only at the labelled
    positions, gathered row by row (a proposal measured here): 24% of the [2B, T] positions of these
    batches carry a label, the others are prompt or padding. Llama-style models, no prompt learning."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    out = base.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    labels = batch.labels[:, 1:]
    where = labels != -100
    logits = base.get_output_embeddings()(out.last_hidden_state[:, :-1][where]).float()
    token_logps = -F.cross_entropy(logits, labels[where], reduction="none")
    rows = where.nonzero()[:, 0]
    logps = torch.zeros(len(labels), dtype=token_logps.dtype).index_add(0, rows, token_logps)
    return logps[: len(batch)], logps[len(batch) :]


def objective(name: str) -> Any:
    from ftlab.objectives import DPO, SFT
    from ftlab.objectives.dpo import answer_logps, preference_logits

    class ReferenceFirstDPO(DPO):
        """DPO with the reference pass run before the policy pass (a proposal measured here, not in ftlab):
        the reference's transient logits are freed before the policy's activations are built up. The
        metrics are ftlab's `DPO.compute`, in the same order."""

        logps = staticmethod(answer_logps)

        def compute(self, ctx: Any, batch: Any) -> dict[str, Any]:
            with ctx.reference() as reference:
                ref_chosen, ref_rejected = self.logps(reference, batch)
            chosen, rejected = self.logps(ctx.model, batch)
            h = preference_logits(chosen, rejected, ref_chosen, ref_rejected)
            reward_chosen = self.beta * (chosen - ref_chosen).detach()
            reward_rejected = self.beta * (rejected - ref_rejected).detach()
            return {
                "loss": self.loss_fn(h, self.beta).mean(),
                "rewards/chosen": reward_chosen.mean(),
                "rewards/rejected": reward_rejected.mean(),
                "rewards/accuracy": (reward_chosen > reward_rejected).float().mean(),
                "rewards/margin": (reward_chosen - reward_rejected).mean(),
                "logps/chosen": chosen.detach().mean(),
                "logps/rejected": rejected.detach().mean(),
            }

    class ProposedDPO(ReferenceFirstDPO):
        """Reference first, and the output head only where a label is."""

        logps = staticmethod(compact_answer_logps)

    if name == "ftlab_sft":
        return SFT()
    if name == "ftlab_dpo_precompute":
        return DPO(beta=BETA, precompute_reference=True)
    if name == "ftlab_dpo_reference_first":
        return ReferenceFirstDPO(beta=BETA)
    if name == "ftlab_dpo_proposed":
        return ProposedDPO(beta=BETA)
    return DPO(beta=BETA)


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak_rss() -> float:
    """Reset the resident-set high-water mark (Linux >= 4.0); return the current RSS in MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kb("VmRSS") / 1024


def ftlab_fit(name: str, n_steps: int, callbacks: list[Any], root: Path) -> tuple[Any, Any, float]:
    """Fit ftlab on the ordered pairs for `n_steps` steps; returns (module, trainer, RSS in MB at the reset)."""
    import lightning.pytorch as pl
    import torch
    from transformers import AutoModelForCausalLM

    from ftlab.methods import LoRA
    from ftlab.module import FineTuneModule

    bb = backbone()
    bb.model_dir(AutoModelForCausalLM)  # build the saved model once, before measuring
    dm = datamodule(n_steps * PAIRS_PER_STEP, as_sft=name == "ftlab_sft")
    pl.seed_everything(SEED, verbose=False)
    baseline = reset_peak_rss()
    module = FineTuneModule(
        bb,
        LoRA(r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], target_modules="all-linear"),
        objective(name),
        optimizer=lambda p: torch.optim.AdamW(p, lr=LR, weight_decay=0.0),
    )
    trainer = pl.Trainer(
        default_root_dir=root,
        max_steps=n_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    trainer.fit(module, dm)
    return module, trainer, baseline


# --------------------------------------------------------------------------- memory
def memory_timeline_peak(prof: Any) -> tuple[float, dict[str, float]]:
    """Peak of live CPU tensor bytes in a profile (MB), and its split by the profiler's categories."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        _, sizes = json.loads(Path(path).read_text())
    totals = [sum(row) for row in sizes]
    at = max(range(len(totals)), key=totals.__getitem__)
    split = {c: sizes[at][i + 1] / 2**20 for i, c in enumerate(CATEGORIES)}
    return totals[at] / 2**20, split


def measure_memory(name: str, rss_steps: int, root: Path) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch
    from torch.profiler import ProfilerActivity, profile

    class Probe(pl.Callback):
        """Reads the peak RSS after `rss_steps` steps, then profiles the next step's memory and sums the
        tensors autograd saves for its backward (by width: what the activations are made of)."""

        def __init__(self) -> None:
            self.prof: Any = None
            self.peak_rss_mb = 0.0
            self.result: tuple[float, dict[str, float]] | None = None
            self.hooks: Any = None
            self.saved: dict[int, tuple[int, tuple[int, ...]]] = {}

        def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, *args: Any) -> None:
            if trainer.global_step != rss_steps:
                return
            self.shape = tuple(batch.input_ids.shape)
            params = {p.untyped_storage().data_ptr() for p in module.parameters()}

            def pack(t: torch.Tensor) -> torch.Tensor:
                storage = t.untyped_storage()
                if storage.data_ptr() not in params:
                    self.saved.setdefault(storage.data_ptr(), (storage.nbytes(), tuple(t.shape)))
                return t

            self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
            self.hooks.__enter__()

        def on_before_backward(self, *args: Any) -> None:
            if self.hooks is not None:
                self.hooks.__exit__(None, None, None)
                self.hooks = None

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step == rss_steps:
                self.peak_rss_mb = status_kb("VmHWM") / 1024
                self.prof = profile(
                    activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
                )
                self.prof.start()
            elif trainer.global_step == rss_steps + 1 and self.prof is not None:
                self.prof.stop()
                self.result = memory_timeline_peak(self.prof)
                self.prof = None

        def saved_by_width(self) -> dict[str, float]:
            cfg = BACKBONE
            widths = {
                cfg["intermediate_size"]: "MLP intermediates",
                cfg["hidden_size"]: "hidden states",
                cfg["hidden_size"] // cfg["num_attention_heads"]: "attention q/k/v/out",
                VOCAB: "vocabulary-wide (logits, log-softmax)",
                LORA["r"]: "LoRA A outputs",
            }
            out: dict[str, float] = {}
            for nbytes, shape in self.saved.values():
                name = widths.get(shape[-1] if shape else 0, "other (masks, norms' statistics)")
                if len(shape) == 4 and shape[-1] == shape[-2]:
                    name = "other (masks, norms' statistics)"
                out[name] = out.get(name, 0.0) + nbytes / 2**20
            return out

    probe = Probe()
    module, trainer, baseline = ftlab_fit(name, rss_steps + 1, [probe], root)
    assert probe.result is not None, "the profiled step did not run"
    # The training state, exactly: stored weights, one gradient per trainable parameter, AdamW's moments.
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in module.model.state_dict().values()
    }
    grads = sum(p.numel() * p.element_size() for p in module.method.trainable_parameters(module.model).values())
    opt = trainer.optimizers[0]
    moments = sum(v.nbytes for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim)
    peak, split = probe.result
    return {
        "contender": name,
        "peak_tensor_mb": peak,
        "peak_split_mb": split,
        "saved_for_backward_mb": probe.saved_by_width(),
        "profiled_batch": probe.shape,
        "peak_rss_delta_mb": probe.peak_rss_mb - baseline,
        "state_mb": (sum(storages.values()) + grads + moments) / 2**20,
        "reference_model": module.reference_model is not None,
        "trainable_params": module.count_parameters()[0],
        "total_params": module.count_parameters()[1],
        "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- speed
class StepProfiler:
    """Profiles CPU op time over `n` steps once `after` steps have run (`n` = 0: never)."""

    def __init__(self, after: int, n: int) -> None:
        self.after, self.n = after, n
        self.prof: Any = None
        self.ops: list[dict[str, Any]] = []
        self.wall = 0.0

    def step_done(self, done: int) -> None:
        from torch.profiler import ProfilerActivity, profile

        if self.n and done == self.after:
            self.prof = profile(activities=[ProfilerActivity.CPU])
            self.prof.start()
            self.t0 = time.perf_counter()
        elif self.prof is not None and done == self.after + self.n:
            self.prof.stop()
            self.wall = (time.perf_counter() - self.t0) / self.n
            events = sorted(self.prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            self.ops = [
                {
                    "op": e.key,
                    "self_ms_per_step": e.self_cpu_time_total / 1000 / self.n,
                    "calls_per_step": e.count / self.n,
                }
                for e in events[:TOP_OPS]
            ]
            self.op_ms = sum(e.self_cpu_time_total for e in events) / 1000 / self.n
            self.prof = None

    def result(self) -> dict[str, Any]:
        if not self.ops:
            return {}
        return {"profile": {"wall_ms_per_step": 1000 * self.wall, "op_ms_per_step": self.op_ms, "top": self.ops}}


def measure_speed_ftlab(name: str, warmup: int, steps: int, root: Path, profile_steps: int = 0) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch

    profiler = StepProfiler(warmup, profile_steps)

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.inner: list[float] = []
            self.cycle: list[float] = []
            self.first: dict[str, float] = {}
            self.last_end: float | None = None

        def on_train_batch_start(self, *args: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            now = time.perf_counter()
            self.inner.append(now - self.t0)
            if self.last_end is not None:
                self.cycle.append(now - self.last_end)
            self.last_end = now
            if not self.first:
                m = trainer.callback_metrics
                self.first = {k: float(m[f"train/{k}"]) for k in ("loss", "logps/chosen", "logps/rejected")}
            profiler.step_done(len(self.inner))

    timer = StepTimer()
    ftlab_fit(name, warmup + steps, [timer], root)
    return profiler.result() | {
        "contender": name,
        "step_seconds": statistics.median(timer.cycle[warmup - 1 :]),
        "inner_seconds": statistics.median(timer.inner[warmup:]),
        "steps_timed": len(timer.inner[warmup:]),
        "first_step": timer.first,
        "torch_threads": torch.get_num_threads(),
    }


def measure_speed_trl(name: str, warmup: int, steps: int, root: Path, profile_steps: int = 0) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from ftlab.models.tokenizers import load_tokenizer

    profiler = StepProfiler(warmup, profile_steps)
    folder = str(backbone().model_dir(AutoModelForCausalLM))
    pairs = datamodule((warmup + steps) * PAIRS_PER_STEP).train_set
    assert all(p.chosen_labels == p.chosen_ids and p.rejected_labels == p.rejected_ids for p in pairs)
    dataset = Dataset.from_dict(
        {
            "prompt_ids": [p.prompt_ids for p in pairs],
            "chosen_ids": [p.chosen_ids for p in pairs],
            "rejected_ids": [p.rejected_ids for p in pairs],
        }
    )

    class PretokenizedDPOTrainer(DPOTrainer):
        """Takes ftlab's tokenized pairs as they are (prompt_ids, chosen_ids, rejected_ids)."""

        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.inner: list[float] = []
            self.cycle: list[float] = []
            self.first: dict[str, float] = {}
            self.last_end: float | None = None
            self.trainer: Any = None

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            self.inner.append(now - self.t0)
            if self.last_end is not None:
                self.cycle.append(now - self.last_end)
            self.last_end = now
            if not self.first:
                m = self.trainer._metrics["train"]
                self.first = {"logps/chosen": m["logps/chosen"][-1], "logps/rejected": m["logps/rejected"][-1]}
            profiler.step_done(len(self.inner))

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    args = DPOConfig(
        output_dir=str(root),
        per_device_train_batch_size=PAIRS_PER_STEP,
        gradient_accumulation_steps=1,
        max_steps=warmup + steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=0.0,
        beta=BETA,
        loss_type=["sigmoid"],
        max_length=MAX_LENGTH,
        precompute_ref_log_probs=False,
        gradient_checkpointing=name == "trl_dpo_gradient_checkpointing",
        bf16=False,
        fp16=False,
        use_cpu=True,
        report_to="none",
        eval_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        train_sampling_strategy="sequential",
        seed=SEED,
    )
    timer = StepTimer()
    trainer = PretokenizedDPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=load_tokenizer(folder),
        peft_config=LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
        callbacks=[timer],
    )
    timer.trainer = trainer
    trainer.train()
    return profiler.result() | {
        "contender": name,
        "step_seconds": statistics.median(timer.cycle[warmup - 1 :]),
        "inner_seconds": statistics.median(timer.inner[warmup:]),
        "steps_timed": len(timer.inner[warmup:]),
        "first_step": timer.first,
        "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- orchestration
def child(kind: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    import logging

    import torch

    for logger in ("ftlab", "lightning", "lightning.pytorch", "transformers", "trl"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(sys.stdout):
        root = Path(tmp)
        if kind == "memory":
            result = measure_memory(name, args.rss_steps, root)
        else:
            n_profile = args.steps if kind == "profile" else 0
            measure = measure_speed_trl if name.startswith("trl") else measure_speed_ftlab
            result = measure(name, args.warmup, args.steps, root, n_profile)
    return result | {"load_average_1min": [load, os.getloadavg()[0]]}


def spawn(kind: str, name: str, args: argparse.Namespace) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--child", kind, name]
    cmd += ["--warmup", str(args.warmup), "--steps", str(args.steps), "--rss-steps", str(args.rss_steps)]
    cmd += ["--threads", str(args.threads)] + (["--pairs", str(args.pairs)] if args.pairs else [])
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        print(f"{kind} {name}: failed\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    result = json.loads(line[len("RESULT ") :])
    result["process_seconds"] = time.perf_counter() - t0
    print(f"{kind} {name}: {json.dumps(result)}", flush=True)
    return result


def memory_section(rows: dict[str, dict[str, Any]]) -> str:
    sft = rows.get("ftlab_sft")
    lines = [
        "| contender | peak live tensors (MB) | ratio to SFT | activations | temporaries | inputs | "
        "params | grads | optimizer | peak RSS delta (MB) | ratio to SFT | weights+grads+AdamW (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in MEMORY:
        r = rows.get(name)
        if r is None:
            continue
        s = r["peak_split_mb"]
        ratio = f"{r['peak_tensor_mb'] / sft['peak_tensor_mb']:.3f}" if sft else "-"
        rss_ratio = f"{r['peak_rss_delta_mb'] / sft['peak_rss_delta_mb']:.3f}" if sft else "-"
        lines.append(
            f"| {name} | {r['peak_tensor_mb']:.1f} | {ratio} | {s['activation']:.1f} | {s['temporary']:.1f} | "
            f"{s['input']:.1f} | {s['parameter']:.1f} | {s['gradient']:.1f} | {s['optimizer_state']:.1f} | "
            f"{r['peak_rss_delta_mb']:.0f} | {rss_ratio} | {r['state_mb']:.1f} |"
        )
    return "\n".join(lines)


def saved_section(rows: dict[str, dict[str, Any]]) -> str:
    names = [n for n in ("ftlab_sft", "ftlab_dpo", "ftlab_dpo_proposed") if n in rows]
    kinds = sorted(
        {k for n in names for k in rows[n]["saved_for_backward_mb"]},
        key=lambda k: -rows[names[0]]["saved_for_backward_mb"].get(k, 0),
    )
    lines = ["| saved for backward (MB) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for kind in kinds:
        lines.append(
            f"| {kind} | " + " | ".join(f"{rows[n]['saved_for_backward_mb'].get(kind, 0):.1f}" for n in names) + " |"
        )
    totals = " | ".join(f"**{sum(rows[n]['saved_for_backward_mb'].values()):.1f}**" for n in names)
    lines.append(f"| total | {totals} |")
    return "\n".join(lines)


def reference_order(width: int, logits_mb: float) -> str:
    """Where the measured `DPO.compute` runs the reference pass (moved before the policy pass in 709c218)."""
    import inspect

    from ftlab.objectives import DPO

    source = inspect.getsource(DPO.compute)
    logits = (
        f"the reference's largest tensor is its logits (a full [{2 * PAIRS_PER_STEP}, {width}, {VOCAB}] float32 "
        f"tensor is {logits_mb:.1f} MB), so that extra grows with the vocabulary relative to the model's width "
        "(logits [2B, T, V] against activations of about [2B, T, k·hidden] per block)"
    )
    if source.find("reference_logps(") < source.find("answer_logps(ctx.model"):
        return (
            "`DPO.compute` runs the reference pass before the policy pass, so the reference's tensors are freed "
            "before the policy's activations build up and add nothing at the peak, whatever the vocabulary (run "
            f"after it, {logits})."
        )
    return (
        "`DPO.compute` runs the reference pass after the policy pass, so what the reference allocates comes on "
        f"top of the policy's activations, which are still alive; {logits}."
    )


def ftlab_head() -> str:
    """How the measured ftlab computes answer log-probabilities (the head changed in commit a60e393)."""
    import importlib.util

    if importlib.util.find_spec("ftlab.objectives.token_logps") is not None:
        return (
            "ftlab (`ftlab.objectives.token_logps`) asks the model for logits from the first position that "
            "predicts a label onward (`logits_to_keep`, one window for all rows, prompt tails and padding "
            "included) and runs the log-softmax on the labelled positions only, in both passes."
        )
    return (
        "ftlab computes the full logits [2B, T, V] and a log-softmax over the vocabulary at every position "
        "(prompt and padding included) in both passes."
    )


def paired_ratios(rounds: dict[str, list[dict[str, Any]]], num: str, den: str) -> list[float]:
    pairs = zip(rounds.get(num, []), rounds.get(den, []), strict=False)  # a failed run leaves a round out
    return [a["step_seconds"] / b["step_seconds"] for a, b in pairs]


def speed_section(rounds: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, float]]:
    med = {n: statistics.median(r["step_seconds"] for r in rs) for n, rs in rounds.items() if rs}
    inner = {n: statistics.median(r["inner_seconds"] for r in rs) for n, rs in rounds.items() if rs}
    lines = [
        "| contender | s/step (median over rounds) | per-round medians | s/step, step hooks only | "
        "step-0 logps chosen / rejected |",
        "|---|---:|---|---:|---|",
    ]
    for name, rs in rounds.items():
        if not rs:
            continue
        first = rs[0]["first_step"]
        per_round = ", ".join(f"{r['step_seconds']:.3f}" for r in rs)
        lines.append(
            f"| {name} | {med[name]:.3f} | {per_round} | "
            f"{inner[name]:.3f} | {first['logps/chosen']:.3f} / {first['logps/rejected']:.3f} |"
        )
    return "\n".join(lines), med


def profile_section(profiles: dict[str, dict[str, Any]]) -> str:
    blocks = []
    for name, r in profiles.items():
        p = r.get("profile")
        if not p:
            continue
        lines = [
            f"**{name}**: wall {p['wall_ms_per_step']:.0f} ms/step, ATen ops {p['op_ms_per_step']:.0f} ms/step "
            f"({100 * p['op_ms_per_step'] / p['wall_ms_per_step']:.0f}%)\n",
            "| op | self ms/step | % of op time | calls/step |",
            "|---|---:|---:|---:|",
        ]
        for o in p["top"]:
            share = 100 * o["self_ms_per_step"] / p["op_ms_per_step"]
            lines.append(f"| `{o['op']}` | {o['self_ms_per_step']:.1f} | {share:.1f} | {o['calls_per_step']:.0f} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run; prints, writes nothing")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "NAME"), help="run one measurement (internal)")
    parser.add_argument("--warmup", type=int, default=3, help="speed: warm-up steps not timed")
    parser.add_argument("--steps", type=int, default=12, help="speed: timed steps")
    parser.add_argument("--rounds", type=int, default=3, help="speed: alternating rounds of every contender")
    parser.add_argument("--profile-steps", type=int, default=3, help="speed: steps profiled per side")
    parser.add_argument("--rss-steps", type=int, default=4, help="memory: steps before the profiled step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per measurement process")
    parser.add_argument("--pairs", type=Path, help="tokenized pairs written by the parent process (internal)")
    parser.add_argument("--out", type=Path, default=HERE / "DPO.md")
    args = parser.parse_args()
    global PAIRS_FILE
    PAIRS_FILE = args.pairs
    if args.child:
        print("RESULT " + json.dumps(child(*args.child, args)))
        return
    if args.quick:
        args.warmup, args.steps, args.rounds, args.rss_steps, args.profile_steps = 1, 2, 1, 1, 1
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        args.pairs = Path(tmp) / "pairs.json"
        n_pairs = PAIRS_PER_STEP * max(args.warmup + args.steps, args.rss_steps + 1) + PAIRS_PER_STEP
        pairs = datamodule(n_pairs).train_set
        args.pairs.write_text(json.dumps([vars(p) for p in pairs]))
        run_all(args, start)


def run_all(args: argparse.Namespace, start: float) -> None:
    """Every measurement in its own process; writes the Markdown report."""
    profile_args = argparse.Namespace(**{**vars(args), "steps": args.profile_steps})
    memory = {n: r for n in MEMORY if (r := spawn("memory", n, args)) is not None}
    rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in SPEED + EXTRA_SPEED}
    for i in range(args.rounds):
        order = SPEED if i % 2 == 0 else SPEED[::-1]
        for name in order:
            if (r := spawn("speed", name, args)) is not None:
                rounds[name].append(r)
    for name in EXTRA_SPEED:
        if (r := spawn("speed", name, args)) is not None:
            rounds[name].append(r)
    profiles = {n: r for n in SPEED if (r := spawn("profile", n, profile_args)) is not None}
    speed_table, med = speed_section(rounds)
    ratio = med["trl_dpo"] / med["ftlab_dpo"] if {"trl_dpo", "ftlab_dpo"} <= med.keys() else float("nan")
    per_round = ", ".join(f"{x:.2f}" for x in paired_ratios(rounds, "trl_dpo", "ftlab_dpo"))
    per_round_proposed = ", ".join(f"{x:.2f}" for x in paired_ratios(rounds, "trl_dpo", "ftlab_dpo_proposed"))
    trl_over_proposed = med.get("trl_dpo", float("nan")) / med.get("ftlab_dpo_proposed", float("nan"))
    dpo_mem = memory.get("ftlab_dpo")
    width = dpo_mem["profiled_batch"][1] if dpo_mem else 0
    logits_mb = 2 * PAIRS_PER_STEP * width * VOCAB * 4 / 2**20
    sft_peak = memory["ftlab_sft"]["peak_tensor_mb"] if "ftlab_sft" in memory else float("nan")
    extra_mb = (round(dpo_mem["peak_tensor_mb"] - sft_peak, 1) or 0.0) if dpo_mem else float("nan")  # no "-0.0"
    threads = next(iter(memory.values()))["torch_threads"] if memory else "?"
    mem_ratio = (
        memory["ftlab_dpo"]["peak_tensor_mb"] / memory["ftlab_sft"]["peak_tensor_mb"]
        if {"ftlab_dpo", "ftlab_sft"} <= memory.keys()
        else float("nan")
    )
    text = (
        "# DPO benchmark\n\n"
        f"Written by `python benchmarks/dpo.py` ({time.strftime('%Y-%m-%d')}, {time.perf_counter() - start:.0f} s).\n"
        "How each number is measured: the docstring of benchmarks/dpo.py.\n\n"
        f"Configuration: Llama-shaped backbone built from config {BACKBONE}, vocab {VOCAB} (ftlab's offline BPE), "
        f"seed {SEED}, float32, sdpa attention; LoRA r={LORA['r']}, alpha={LORA['alpha']:g}, dropout 0, all linear "
        f"layers but the head; AdamW lr {LR:g}, weight decay 0, no clipping; beta {BETA}; {PAIRS_PER_STEP} pairs "
        f"({2 * PAIRS_PER_STEP} rows) per step; HH-RLHF harmless-base test at max_length {MAX_LENGTH} "
        f"(prompt <= {MAX_PROMPT_LENGTH}), one seeded order, unshuffled, the same batches for every contender. "
        f"CPU, {threads} torch threads, shared machine. Code: {code_state()}. "
        f"torch {version('torch')}, lightning {version('lightning')}, transformers {version('transformers')}, "
        f"peft {version('peft')}, trl {version('trl')}.\n\n"
        f"## Memory: DPO / SFT = {mem_ratio:.3f} (peak live tensor bytes; goal <= 1.15)\n\n"
        f"Peak over step {args.rss_steps + 1} (same 8 rows for every contender); peak RSS delta over steps "
        f"1-{args.rss_steps}. Category columns: the profiler's split at the peak (MB).\n\n"
        f"{memory_section(memory)}\n\n"
        "What the activations are: the tensors autograd keeps for the backward of the profiled step (batch "
        f"{dpo_mem['profiled_batch'] if dpo_mem else '?'}), by their last dimension; the logits the model "
        "returns also stay alive until the loss is computed (the profiler counts them as activations). The "
        "reference pass runs without gradients and saves nothing.\n\n"
        f"{saved_section(memory)}\n\n"
        "Reading: weights, LoRA gradients and AdamW moments are identical for every contender (the reference is "
        "the model with its adapters off: no second model). The peak comes once the policy's forward pass holds "
        "all its activations, dominated by the MLP intermediates. DPO's peak is SFT's "
        f"{extra_mb:+.1f} MB here: {reference_order(width, logits_mb)} Running the reference pass first "
        "(`ftlab_dpo_reference_first`) or precomputing it "
        "(`ftlab_dpo_precompute`) brings the peak to SFT's whatever the vocabulary; computing the head only at "
        "the labelled positions (`ftlab_dpo_proposed`) also shrinks the policy's logits. The peak RSS delta is "
        "dominated by non-tensor memory (the allocator keeps freed blocks, library workspaces, the mapped "
        "checkpoint) and moves by a few percent between runs of the same contender: it does not resolve "
        "differences of this size.\n\n"
        f"## Speed: TRL / ftlab = {ratio:.2f} (goal >= 1.3)\n\n"
        f"{args.warmup} warm-up steps, then {args.steps} timed steps per run; {args.rounds} rounds, alternating. "
        "s/step: optimizer step to optimizer step (the loop's whole cycle: collate, forward, reference, backward, "
        "AdamW, logging). Step hooks only: from the step-begin hook to the step-end hook (without fetching the "
        "batch). Equal step-0 log-probabilities: the two sides score the same tokens with the same weights.\n\n"
        f"{speed_table}\n\n"
        f"TRL / ftlab per round (paired): {per_round}. TRL / proposed: {trl_over_proposed:.2f} "
        f"(per round: {per_round_proposed}).\n\n"
        "What each side does per step (same batch): one policy forward over the 2B rows with gradients, one "
        "reference forward with the LoRA adapters disabled under `no_grad` (TRL: `use_adapter(..., None)`; "
        "ftlab: `method.disabled`), the sigmoid loss, one backward, one AdamW step. Neither precomputes the "
        f"reference. {ftlab_head()} TRL replaces the model's head by its fused "
        "chunked log-prob function (`add_fused_lm_head`): no [2B, T, V] tensor, but on a device without "
        "Triton it scores every position too, computes entropy, mean logit and top-1 for its metrics in "
        "plain torch ops over the whole vocabulary (in the reference pass as well), and recomputes the logits "
        "tile by tile in the backward. TRL also calls `.item()` on a dozen metrics per step (free on CPU).\n\n"
        "## Where the time goes (torch.profiler, CPU ops)\n\n"
        f"One more run per side, {args.profile_steps} steps profiled after the warm-up (the profiler slows a step a "
        "little); self CPU time per step of the busiest ops. Op time / wall: the share of the step spent inside "
        "ATen ops (the rest is Python: the loop, hooks, logging, module dispatch).\n\n"
        f"{profile_section(profiles)}\n"
    )
    print(text)
    if not args.quick:
        args.out.write_text(text)


def code_state() -> str:
    """The ftlab code measured: its commit, and whether ftlab/ had uncommitted changes."""
    import subprocess

    import ftlab

    root = Path(ftlab.__file__).resolve().parent.parent
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "ftlab"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "ftlab (not a git checkout)"
    return f"ftlab at commit {commit.stdout.strip()}" + (" + uncommitted changes" if dirty.stdout.strip() else "")


def version(pkg: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
