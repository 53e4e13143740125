"""Shared fixtures: an offline environment, a tiny Llama and a tiny BERT, small data files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}
TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
}


@pytest.fixture(scope="session", autouse=True)
def ftlab_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session: tokenizers and tiny backbones are built once."""
    path = tmp_path_factory.mktemp("ftlab-cache")
    os.environ["FTLAB_CACHE"] = str(path)
    os.environ["HF_DATASETS_CACHE"] = str(path / "datasets")
    return path


@pytest.fixture(scope="session")
def tiny_llama():
    from ftlab.models import TinyBackbone

    return TinyBackbone(config=TINY_LLAMA, vocab_size=512)


@pytest.fixture(scope="session")
def tokenizer(tiny_llama):
    return tiny_llama.load_tokenizer()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def sft_rows() -> list[dict]:
    return [
        {"instruction": f"Say the word number {i}.", "input": "" if i % 2 else "Be brief.", "output": f"word {i}"}
        for i in range(24)
    ]


@pytest.fixture
def sft_file(tmp_path: Path, sft_rows: list[dict]) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", sft_rows)


def quiet_trainer(root: Path, steps: int, **overrides: Any) -> Any:
    """A CPU Trainer for in-process test fits: no logger, progress bar, model summary or checkpoints unless
    `overrides` turn them on; every step logged."""
    import lightning.pytorch as pl

    options: dict[str, Any] = {
        "default_root_dir": root,
        "max_steps": steps,
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "log_every_n_steps": 1,
    }
    return pl.Trainer(**(options | overrides))
