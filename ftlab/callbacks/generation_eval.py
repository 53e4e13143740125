"""GenerationEval: answers to held-out prompts, scored against references, in the run's summary.

At the end of a fit's last training epoch (and every `every_n_epochs` epochs if set; a run stopped
at max_steps ends its epoch there, with or without validation data; never in a run stopped by
preemption, whose grace period is for its checkpoint) the model answers each prompt of `file`
(greedy by default), rendered with the run's chat template exactly as PromptDataModule renders
prompts (`ftlab.data.prompts.prompt_segments`), and the answers are scored:
- `gen/exact_match`: answer and reference equal after collapsing whitespace (case kept);
- `gen/rougeL_f`: mean ROUGE-L F-measure (torchmetrics, which lower-cases and keeps [a-z0-9] words;
  ROUGE-L needs no nltk, only ROUGE-Lsum and the stemmer do);
- `gen/bleu`: corpus BLEU-`bleu_n_gram` (torchmetrics, whitespace tokens, no smoothing);
- `gen/<name>`: the mean score of each reward function in `rewards` (`FunctionReward`, as the RL objectives
  take them), called with the prompts, the answers, their token ids and the row fields `reward_columns`;
- `gen/gsm8k_accuracy`: with `gsm8k_field`, final-answer accuracy: one more reward function,
  `ftlab.rewards.gsm8k.gsm8k_exact_match`, with the field's final number as its `answer` column.
They are logged with `pl_module.log`, so they land in summary.json's "metrics". The prompts,
references and answers of the latest evaluation go to `<run folder>/gen_eval.jsonl` and, with a
WandbLogger attached, to a W&B table `gen/samples`.

Rows: `prompt_field` (a string; `input_field`, when present and non-empty, is appended after a
blank line, as in SFT data) and `reference_field`; a row holding a list `instances` (the
Self-Instruct layout) reads input and reference from its first instance. The file must not be a
training file of the run (held-out prompts are never trained on). Sampling (`do_sample`) reuses
`ftlab.objectives.rollouts.sample`; greedy decoding calls `generate` with the same stop tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from torchmetrics.text import BLEUScore, ROUGEScore
from transformers import GenerationConfig, PreTrainedTokenizerBase

from ftlab import runfolder
from ftlab.batches import PromptBatch
from ftlab.callbacks.preemption import preempted
from ftlab.data.chat import tokenize_segments
from ftlab.data.files import load_rows
from ftlab.data.prompts import prompt_segments
from ftlab.errors import FTLabError
from ftlab.objectives.rollouts import sample, stop_ids
from ftlab.rewards.gsm8k import extract_answer, gsm8k_exact_match
from ftlab.rewards.sources import FunctionReward

FILE = "gen_eval.jsonl"


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def training_specs(datamodule: object) -> list[str]:
    """Every training file of a datamodule, the tasks' files for a mixture (its own specs are task names)."""
    tasks = getattr(datamodule, "tasks", None)
    if isinstance(tasks, dict):
        return [spec for task in tasks.values() for spec in training_specs(task)]
    return [str(s) for s in getattr(datamodule, "train_specs", None) or []]


def text_metrics(answers: list[str], references: list[str], bleu_n_gram: int = 4) -> dict[str, float]:
    """Exact match, mean ROUGE-L F and corpus BLEU of answers against one reference each."""
    rouge = ROUGEScore(rouge_keys="rougeL")(answers, references)
    return {
        "exact_match": sum(_same(a, r) for a, r in zip(answers, references, strict=True)) / len(answers),
        "rougeL_f": float(rouge["rougeL_fmeasure"]),
        "bleu": float(BLEUScore(n_gram=bleu_n_gram)(answers, [[r] for r in references])),
    }


class GenerationEval(pl.Callback):
    """Answers held-out prompts at the end of fit and logs exact match, ROUGE-L, BLEU and reward functions' means.

    Args:
        file: Held-out prompts (json, jsonl, csv, ...); never a training file of the run.
        prompt_field: Column holding the prompt (e.g. `instruction`, or `question` for GSM8K).
        input_field: Column appended to the prompt after a blank line when non-empty; None for none.
        reference_field: Column holding the reference answer; None: no exact match, ROUGE or BLEU.
        gsm8k_field: Column holding a GSM8K answer (a number, or a solution ending in '#### n'): adds
            `gen/gsm8k_accuracy`.
        rewards: Reward functions scoring the answers, each logged as `gen/<its name>` (the mean).
        reward_columns: Row fields handed to the reward functions as columns (e.g. [answer]).
        limit: Use the first `limit` rows of the file.
        max_new_tokens: Longest answer in tokens.
        max_prompt_length: Longest prompt in tokens; longer prompts are cut from the left (BOS kept).
        batch_size: Prompts per `generate` call.
        do_sample: Sample (with temperature and top_p) instead of greedy decoding.
        temperature: Sampling temperature (with do_sample).
        top_p: Nucleus sampling mass (with do_sample).
        system_prompt: A system message put before every prompt.
        bleu_n_gram: Longest n-gram of BLEU.
        every_n_epochs: Also evaluate every this many epochs; 0: only at the end of the fit's last epoch.
    """

    def __init__(
        self,
        file: str,
        prompt_field: str = "instruction",
        input_field: str | None = "input",
        reference_field: str | None = "output",
        gsm8k_field: str | None = None,
        rewards: list[FunctionReward] | None = None,
        reward_columns: list[str] | None = None,
        limit: int | None = 32,
        max_new_tokens: int = 64,
        max_prompt_length: int = 256,
        batch_size: int = 8,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        system_prompt: str | None = None,
        bleu_n_gram: int = 4,
        every_n_epochs: int = 0,
    ) -> None:
        if reference_field is None and gsm8k_field is None and not rewards:
            raise FTLabError("GenerationEval needs reference_field, gsm8k_field or rewards: there is nothing to score")
        if max_new_tokens < 1 or max_prompt_length < 2 or batch_size < 1:
            raise FTLabError("GenerationEval max_new_tokens, max_prompt_length and batch_size must be positive")
        self.file = file
        self.prompt_field, self.input_field = prompt_field, input_field
        self.reference_field, self.gsm8k_field = reference_field, gsm8k_field
        self.rewards, self.reward_columns = list(rewards or []), list(reward_columns or [])
        self.limit, self.max_new_tokens, self.max_prompt_length = limit, max_new_tokens, max_prompt_length
        self.batch_size, self.do_sample, self.temperature, self.top_p = batch_size, do_sample, temperature, top_p
        self.system_prompt, self.bleu_n_gram, self.every_n_epochs = system_prompt, bleu_n_gram, every_n_epochs
        self.rows: list[dict[str, Any]] = []

    # --- reading the prompts
    def read(self) -> list[dict[str, Any]]:
        """Rows of {prompt, reference, gsm8k}; errors name the file, row and key."""
        rows = load_rows(self.file)
        rows = rows.select(range(min(self.limit, len(rows)))) if self.limit else rows
        out = []
        for i, row in enumerate(rows):
            where = f"generation-eval file {self.file} row {i}"
            if isinstance(row.get("instances"), list) and row["instances"]:
                row = {**row, **row["instances"][0]}  # Self-Instruct: one {input, output} per task
            keys = [k for k in (self.prompt_field, self.reference_field, self.gsm8k_field, *self.reward_columns) if k]
            missing = [k for k in keys if row.get(k) is None or not str(row[k]).strip()]
            if missing:
                raise FTLabError(f"{where} has no '{missing[0]}' field")
            prompt = str(row[self.prompt_field])
            extra = row.get(self.input_field) if self.input_field else None
            out.append(
                {
                    "prompt": f"{prompt}\n\n{extra}" if extra else prompt,
                    "reference": str(row[self.reference_field]) if self.reference_field else None,
                    "gsm8k": str(row[self.gsm8k_field]) if self.gsm8k_field else None,
                    **({"columns": {k: row[k] for k in self.reward_columns}} if self.reward_columns else {}),
                }
            )
        return out

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        held = Path(self.file).expanduser().resolve()
        train = training_specs(trainer.datamodule)
        if any(Path(spec).expanduser().resolve() == held for spec in train):
            raise FTLabError(f"generation-eval file {self.file} is also a training file; held-out prompts must not be")
        self.rows = self.read()

    def encode(self, tok: PreTrainedTokenizerBase, prompts: list[str]) -> PromptBatch:
        """Left-padded prompts through the chat template, as PromptDataModule builds them."""
        ids: list[list[int]] = []
        texts: list[str] = []
        for i, prompt in enumerate(prompts):
            messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            segments = prompt_segments(tok, [*messages, {"role": "user", "content": prompt}], f"prompt {i}")
            row, _ = tokenize_segments(tok, segments)
            if len(row) > self.max_prompt_length:
                head = row[:1] if row[0] == tok.bos_token_id else []
                row = head + row[len(row) - self.max_prompt_length + len(head) :]
            ids.append(row)
            texts.append("".join(text for text, _ in segments))
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for r, row in enumerate(ids):
            input_ids[r, width - len(row) :] = torch.tensor(row)
            mask[r, width - len(row) :] = 1
        return PromptBatch(input_ids=input_ids, attention_mask=mask, index=torch.arange(len(ids)), prompts=texts)

    # --- answering and scoring
    def answer(self, model: torch.nn.Module, tok: PreTrainedTokenizerBase, batch: PromptBatch) -> list[str]:
        if self.do_sample:
            return sample(model, tok, batch, 1, self.max_new_tokens, self.temperature, self.top_p).completions
        stop = stop_ids(model, tok)
        config = GenerationConfig(
            do_sample=False, max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=stop
        )
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.generate(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, generation_config=config
                )
        finally:
            model.train(was_training)
        answers = []
        for row in out[:, batch.input_ids.shape[1] :].tolist():
            ends = [i for i, t in enumerate(row) if t in stop]
            answers.append(tok.decode(row[: ends[0]] if ends else row, skip_special_tokens=True))
        return answers

    def evaluate(self, pl_module: Any) -> tuple[dict[str, float], list[dict[str, Any]]]:
        tok, model = pl_module.tokenizer, pl_module.model
        answers: list[str] = []
        for start in range(0, len(self.rows), self.batch_size):
            chunk = self.rows[start : start + self.batch_size]
            batch = self.encode(tok, [r["prompt"] for r in chunk])
            batch.input_ids = batch.input_ids.to(pl_module.device)
            batch.attention_mask = batch.attention_mask.to(pl_module.device)
            answers += self.answer(model, tok, batch)
        table = [{**r, "answer": a} for r, a in zip(self.rows, answers, strict=True)]
        metrics: dict[str, float] = {}
        if self.reference_field:
            metrics.update(text_metrics(answers, [r["reference"] for r in self.rows], self.bleu_n_gram))
        columns = {k: [r["columns"][k] for r in self.rows] for k in self.reward_columns}
        scored = [(reward, columns) for reward in self.rewards]
        if self.gsm8k_field:
            # a solution ending in '#### n' or a bare number: the reference is its final number
            finals = [extract_answer(r["gsm8k"]) for r in self.rows]
            if None in finals:
                raise FTLabError(
                    f"generation-eval file {self.file} row {finals.index(None)}: '{self.gsm8k_field}' holds no number"
                )
            gsm8k = FunctionReward(gsm8k_exact_match, name="gsm8k_accuracy")
            scored.append((gsm8k, {"answer": [f"{f:g}" for f in finals]}))
        ids = [tok(a, add_special_tokens=False)["input_ids"] for a in answers] if scored else []
        prompts = [r["prompt"] for r in self.rows]
        for reward, given in scored:
            answered = SimpleNamespace(prompts=prompts, completions=answers, completion_ids=ids, columns=given)
            metrics[reward.name] = float(reward.score(answered, torch.device("cpu")).mean())
        return metrics, table

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.rows or preempted(trainer):
            return  # a preempted run has seconds left: its checkpoint is saved, no generation pass starts
        max_epochs = trainer.max_epochs or 0
        last = (
            trainer.should_stop  # set by RunReport at max_steps, or by a callback that stops training
            or (max_epochs > 0 and trainer.current_epoch + 1 >= max_epochs)
            or 0 < trainer.max_steps <= trainer.global_step
        )
        periodic = self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if not (last or periodic):
            return
        metrics, table = self.evaluate(pl_module)
        for name, value in metrics.items():
            pl_module.log(f"gen/{name}", value, on_step=False, on_epoch=True, batch_size=len(table))
        if trainer.is_global_zero:
            step = {"step": trainer.global_step, "epoch": trainer.current_epoch}
            lines = "".join(json.dumps({**step, **row}) + "\n" for row in table)
            runfolder.write_text(Path(trainer.default_root_dir) / FILE, lines)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    columns = ["prompt", "reference", "answer"]
                    logger.log_table(key="gen/samples", columns=columns, data=[[r[c] for c in columns] for r in table])
