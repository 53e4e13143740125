"""Setup every benchmark shares: one offline backbone, the data in one fixed order, step clocks, memory and
op profiles. Both sides of a comparison read the same saved model folder and the same batches in the same
order, so a difference in time is a difference in the training code.

Backbone: a Llama-shaped model built from config (`BACKBONE`: hidden 256, 4 blocks, GQA 4/2 heads, MLP 688,
untied head), vocabulary 2048 from ftlab's BPE trained offline on the bundled instruction data, seed 0,
float32, sdpa attention, saved once by `TinyBackbone.model_dir` and loaded by every contender.

Memory ("peak tensor MB"): the training state counted exactly (stored weights, one gradient per trainable
parameter, the optimizer's state tensors) plus the highest point, over one optimizer step, of the bytes
allocated above what was live when the step began, from torch.profiler's memory events (every CPU
allocation and free, in order: the CPU analogue of CUDA's `max_memory_allocated` minus its starting value).
It counts what either side allocates, whichever library does it; allocator slack and library buffers are
not tensors and are left out (the process RSS would add them, and is too noisy on a shared machine).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"
HH = SHARED / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
GPTEACHER = SHARED / "gpteacher" / "roleplay-simple-deduped-roleplay-instruct.json"
PROMPTS = REPO / "ftlab" / "assets" / "synthetic_prompts.jsonl"
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
SEQ = 256  # max_length of every row
BATCH = 8  # rows per optimizer step: 8 SFT rows, 4 DPO pairs (8 rows), 8 GRPO prompts (x G samples)
LR = 5e-4
LORA = {"r": 8, "alpha": 16.0, "dropout": 0.0}
BETA = 0.1  # DPO
GRPO_G, GRPO_NEW_TOKENS, GRPO_PROMPT_LENGTH, GRPO_BETA, GRPO_EPSILON, TARGET = 4, 32, 64, 0.04, 0.2, " the"
TOP_OPS = 12


# --------------------------------------------------------------------------- model and data
def backbone() -> Any:
    from ftlab.models import TinyBackbone

    return TinyBackbone(config=BACKBONE, vocab_size=VOCAB, seed=SEED)


def model_folder() -> Path:
    """The saved model folder every contender loads (built once, cached by ftlab)."""
    from transformers import AutoModelForCausalLM

    return backbone().model_dir(AutoModelForCausalLM)


def load_model() -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_folder()), dtype=torch.float32, attn_implementation="sdpa")


def lora_config() -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def ftlab_method(name: str) -> Any:
    from ftlab.methods import Full, LoRA

    if name == "full":
        return Full()
    return LoRA(r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], target_modules="all-linear")


def _ordered(dm: Any, n: int, index: bool = False) -> Any:
    """Read `dm`'s training set once, keep `n` examples in one seeded order; the loader does not shuffle."""
    import torch

    dm.tokenizer = backbone().load_tokenizer()
    with torch.random.fork_rng(devices=[]):
        dm.setup("fit")
    order = list(range(len(dm.train_set)))
    random.Random(SEED).shuffle(order)
    dm.train_set = [dm.train_set[i] for i in order[:n]]
    if index:
        for i, ex in enumerate(dm.train_set):
            ex.index = i
    return dm


def _unshuffled(cls: type) -> type:
    from torch.utils.data import DataLoader

    class Ordered(cls):  # type: ignore[misc, valid-type]
        def setup(self, stage: str) -> None:
            if self.train_set is None:
                super().setup(stage)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, collate_fn=self.collate)

    Ordered.__name__ = f"Ordered{cls.__name__}"
    return Ordered


def sft_data(n_rows: int, max_length: int = SEQ, batch_size: int = BATCH) -> Any:
    """GPTeacher roleplay instructions as ftlab's SFT rows (chat template, loss on the answer, right padding)."""
    from ftlab.data import SFTDataModule

    dm = _unshuffled(SFTDataModule)(
        train=str(GPTEACHER), output_field="response", max_length=max_length, batch_size=batch_size, seed=SEED
    )
    return _ordered(dm, n_rows)


def pair_data(n_pairs: int, as_sft: bool = False) -> Any:
    """HH-RLHF harmless-base test pairs (prompt cut to 128 from the left, answers to 256 from the right), BATCH // 2
    pairs per step. `as_sft`: the same batches as SFT batches, 2B rows (chosen, then rejected), the same labels."""
    from ftlab.batches import SFTBatch
    from ftlab.data import HHRLHFDataModule

    cls = _unshuffled(HHRLHFDataModule)
    if as_sft:

        class AsSFT(cls):  # type: ignore[misc, valid-type]
            batch_type = SFTBatch

            def collate(self, examples: list[Any]) -> SFTBatch:
                b = super().collate(examples)
                n_loss = int((b.labels != -100).sum())
                return SFTBatch(
                    b.input_ids, b.labels, b.attention_mask, num_tokens=b.num_tokens, num_loss_tokens=n_loss
                )

        cls = AsSFT
    dm = cls(train=str(HH), max_length=SEQ, max_prompt_length=SEQ // 2, batch_size=BATCH // 2, seed=SEED)
    return _ordered(dm, n_pairs, index=True)


def prompt_data() -> Any:
    """ftlab's bundled synthetic prompts, chat template on, BATCH prompts per step in file order."""
    import torch

    from ftlab.data import PromptDataModule

    dm = _unshuffled(PromptDataModule)(train=str(PROMPTS), batch_size=BATCH, max_length=GRPO_PROMPT_LENGTH, seed=SEED)
    dm.tokenizer = backbone().load_tokenizer()
    with torch.random.fork_rng(devices=[]):
        dm.setup("fit")
    return dm


def batches(dm: Any, n: int) -> list[Any]:
    """The first `n` batches of a datamodule's (unshuffled) training loader."""
    out = []
    for batch in dm.train_dataloader():
        out.append(batch)
        if len(out) == n:
            break
    return out


def target_token() -> int:
    ids = backbone().load_tokenizer()(TARGET, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{TARGET!r} is not one token: {ids}"
    return ids[0]


class CountingReward:
    """`ftlab.rewards.TokenShare` of the target token, also counting the completion tokens it is shown (the
    tokens up to and including EOS; one call per optimizer step on both sides)."""

    def __init__(self, token_id: int) -> None:
        from ftlab.rewards import TokenShare

        self.share = TokenShare(token_id=token_id)
        self.completion_tokens: list[int] = []
        self.__name__ = "token_share"

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], **kw: Any) -> Any:
        self.completion_tokens.append(sum(len(ids) for ids in completion_ids))
        return self.share(prompts, completions, completion_ids, **kw)

    def tokens_per_step(self, dm: Any, warmup: int, steps: int) -> float:
        """Non-padding tokens scored per step: G copies of each prompt, plus the completions."""
        n = warmup + steps
        prompts = [int(b.attention_mask.sum()) * GRPO_G for b in batches(dm, n)]
        done = [p + k for p, k in zip(prompts, self.completion_tokens, strict=False)]
        return statistics.mean(done[warmup:n])


def tempfile_root() -> str:
    """A scratch folder for a run's outputs (nothing of it is read back)."""
    import tempfile

    return tempfile.mkdtemp(prefix="ftlab-bench-")


def quiet_trainer(root: str | Path, steps: int, callbacks: list[Any]) -> Any:
    """A CPU Trainer that runs `steps` training steps and nothing else: no logger, progress bar, model summary,
    checkpoints or validation; every step logged (the benchmarks' callbacks read the step's metrics)."""
    import lightning.pytorch as pl

    return pl.Trainer(
        default_root_dir=root,
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        callbacks=callbacks,
    )


# --------------------------------------------------------------------------- clocks and profiles
class Clock:
    """Step-end times of one run; `tick()` at each optimizer step's end, `on_step(k)` callbacks after step k."""

    def __init__(self, warmup: int, steps: int) -> None:
        assert warmup >= 1, "one warm-up step at least: the first timed step starts at a step end"
        self.warmup, self.steps = warmup, steps
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []
        self.hooks: dict[int, list[Callable[[], None]]] = {}

    def tick(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        for hook in self.hooks.get(len(self.ends), []):
            hook()

    def after(self, step: int, hook: Callable[[], None]) -> None:
        self.hooks.setdefault(step, []).append(hook)

    def step_seconds(self) -> list[float]:
        """Step end to step end after the warm-up: the loop's whole cycle (data, forward, backward, optimizer, logs)."""
        ends = self.ends[self.warmup - 1 : self.warmup + self.steps]
        return [b - a for a, b in itertools.pairwise(ends)]

    def cpu_seconds(self) -> list[float]:
        """The same intervals in CPU time of this process: the work done, whatever share of the cores it got."""
        ends = self.cpu_ends[self.warmup - 1 : self.warmup + self.steps]
        return [b - a for a, b in itertools.pairwise(ends)]


def lightning_clock(clock: Clock) -> Any:
    import lightning.pytorch as pl

    class Tick(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            clock.tick()

    return Tick()


def trl_clock(clock: Clock) -> Any:
    from transformers import TrainerCallback

    class Tick(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            clock.tick()

    return Tick()


class MemoryProbe:
    """Peak bytes allocated above the step's starting point, over the steps between `start` and `stop`."""

    def __init__(self) -> None:
        self.prof: Any = None
        self.peak_mb = 0.0

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.prof.start()

    def stop(self) -> None:
        self.prof.stop()
        # an op's own allocations net of its own frees, at its start; frees outside any op are `[memory]` events
        deltas = [(e.time_range.start, e.self_cpu_memory_usage) for e in self.prof.events() if e.self_cpu_memory_usage]
        live = peak = 0
        for _, delta in sorted(deltas, key=lambda t: t[0]):
            live += delta
            peak = max(peak, live)
        self.peak_mb = peak / 2**20
        self.prof = None


def state_mb(model: Any, optimizer: Any) -> float:
    """What is live between steps: weights (each storage once), the gradients that exist now, and the optimizer's
    state tensors."""
    import torch

    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.state_dict().values()}
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    moments = sum(v.nbytes for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim)
    return (sum(storages.values()) + grads + moments) / 2**20


class OpProfile:
    """Self CPU time per step of the busiest ATen ops, over the steps between `start` and `stop`."""

    def __init__(self) -> None:
        self.prof: Any = None
        self.result: dict[str, Any] = {}

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU])
        self.prof.start()
        self.t0 = time.perf_counter()

    def stop(self, steps: int) -> None:
        self.prof.stop()
        wall = (time.perf_counter() - self.t0) / steps
        ops = [e for e in self.prof.key_averages() if e.key.startswith("aten::")]
        ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
        self.result = {
            "wall_ms": 1000 * wall,
            "aten_ms": sum(e.self_cpu_time_total for e in ops) / 1000 / steps,
            "top": [(e.key, e.self_cpu_time_total / 1000 / steps, e.count / steps) for e in ops[:TOP_OPS]],
        }
        self.prof = None


def instrument(clock: Clock, memory: bool, profile: bool, state: Callable[[], float]) -> dict[str, Any]:
    """Attach the memory probe (the first step after the warm-up and timed steps) and the op profile (the two
    steps after that) to a clock; the dict fills in as they run. `state()`: the MB live between steps."""
    out: dict[str, Any] = {}
    at = clock.warmup + clock.steps
    if memory:
        probe = MemoryProbe()

        def begin() -> None:
            out["state_mb"] = state()
            probe.start()

        def end() -> None:
            probe.stop()
            out["step_peak_mb"] = probe.peak_mb
            out["peak_mb"] = out["state_mb"] + probe.peak_mb

        clock.after(at, begin)
        clock.after(at + 1, end)
        at += 1
    if profile:
        ops = OpProfile()
        clock.after(at, ops.start)
        clock.after(at + 2, lambda: (ops.stop(2), out.update(profile=ops.result)))
    return out


def extra_steps(memory: bool, profile: bool) -> int:
    return int(memory) + 2 * int(profile)


def summarize(clock: Clock, tokens_per_step: float, extra: dict[str, Any]) -> dict[str, Any]:
    import torch

    timed = clock.step_seconds()
    step = statistics.median(timed)
    return {
        "step_seconds": step,
        "cpu_seconds": statistics.median(clock.cpu_seconds()),
        "tokens_per_step": tokens_per_step,
        "tokens_per_second": tokens_per_step / step,
        "steps_timed": len(timed),
        "torch_threads": torch.get_num_threads(),
        **extra,
    }


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))
