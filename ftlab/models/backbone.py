"""Backbones: where a run's pretrained model and tokenizer come from.

`Pretrained` loads a Hugging Face model by hub name or local folder through the Auto classes.
`TinyBackbone` builds a small model from a config dict and a BPE tokenizer trained on local text,
saves both with `save_pretrained` into the cache and loads them back through `Pretrained`, so the
offline default exercises the same loading code as a real model. The model class (causal LM,
sequence classifier, ...) is chosen by the objective, not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from ftlab.errors import FTLabError
from ftlab.models.cache import cached_dir
from ftlab.models.tokenizers import build_bpe_tokenizer, load_tokenizer

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_CORPUS = ASSETS / "self_instruct_seed.jsonl"


def _dtype(name: str) -> torch.dtype | str:
    if name == "auto":
        return "auto"
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise FTLabError(f"backbone dtype {name!r} is not a torch dtype (try float32, bfloat16, float16 or auto)")
    return value


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else that does not exist is a mistyped path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


class Backbone:
    """Where the pretrained model and its tokenizer come from."""

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        raise NotImplementedError

    def load_model(self, model_class: Any, **kwargs: Any) -> PreTrainedModel:
        """Load the model through `model_class.from_pretrained` (an Auto class chosen by the objective)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What identifies this backbone (for summaries and cache keys)."""
        raise NotImplementedError


class Pretrained(Backbone):
    """A pretrained Hugging Face model, by hub name or local folder.

    Args:
        name_or_path: Hub id (`org/name`) or a local folder written by `save_pretrained`.
        tokenizer: Tokenizer hub id or folder; defaults to `name_or_path`.
        dtype: Weights dtype: float32, bfloat16, float16, or auto (as saved).
        trust_remote_code: Run modelling code shipped with the checkpoint. Off unless you trust it.
        revision: Hub revision (branch, tag or commit) to pin.
        attn_implementation: Attention kernel: sdpa, eager, flash_attention_2, flex_attention. With packing,
            flex_attention and flash_attention_2 read the documents from position ids (a block mask or varlen
            kernels); sdpa needs a dense block-diagonal mask, its slow path on a GPU.
    """

    def __init__(
        self,
        name_or_path: str,
        tokenizer: str | None = None,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        revision: str | None = None,
        attn_implementation: str | None = "sdpa",
    ) -> None:
        self.name_or_path = str(Path(name_or_path).expanduser()) if name_or_path.startswith("~") else name_or_path
        self.tokenizer = tokenizer or self.name_or_path
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.revision = revision
        self.attn_implementation = attn_implementation
        _dtype(dtype)
        for what, name in (("model", self.name_or_path), ("tokenizer", self.tokenizer)):
            if _looks_like_path(name) and not Path(name).exists():
                raise FTLabError(f"{what} path {name} does not exist")

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        try:
            return load_tokenizer(self.tokenizer, trust_remote_code=self.trust_remote_code)
        except OSError as err:
            raise FTLabError(f"could not load tokenizer {self.tokenizer}: {str(err).splitlines()[0]}") from err

    def load_model(self, model_class: Any, **kwargs: Any) -> PreTrainedModel:
        kwargs.setdefault("dtype", _dtype(self.dtype))
        if self.attn_implementation:
            kwargs.setdefault("attn_implementation", self.attn_implementation)
        try:
            return model_class.from_pretrained(
                self.name_or_path, trust_remote_code=self.trust_remote_code, revision=self.revision, **kwargs
            )
        except OSError as err:
            raise FTLabError(f"could not load model {self.name_or_path}: {str(err).splitlines()[0]}") from err

    def describe(self) -> dict[str, Any]:
        return {"name_or_path": self.name_or_path, "revision": self.revision, "dtype": self.dtype}


class TinyBackbone(Backbone):
    """A small model built from a config dict, with a BPE tokenizer trained on local text: fully offline.

    Args:
        config: Model config keys, with `model_type` (e.g. llama, bert) and sizes; `vocab_size` and
            the special token ids are taken from the tokenizer.
        vocab_size: Vocabulary size of the BPE tokenizer to train.
        corpus: Text or JSON-lines files to train the tokenizer on; defaults to the bundled
            instruction data.
        tokenizer: An existing tokenizer folder to use instead of training one.
        seed: Seed of the random initial weights (the same seed gives the same model everywhere).
        dtype: Weights dtype.
    """

    def __init__(
        self,
        config: dict[str, Any],
        vocab_size: int = 2048,
        corpus: list[str] | None = None,
        tokenizer: str | None = None,
        seed: int = 0,
        dtype: str = "float32",
    ) -> None:
        if "model_type" not in config:
            raise FTLabError("TinyBackbone config needs a 'model_type' key (e.g. llama or bert)")
        self.config = dict(config)
        self.vocab_size = vocab_size
        self.corpus = [Path(p) for p in corpus] if corpus else [BUNDLED_CORPUS]
        for path in self.corpus:
            if not path.is_file():
                raise FTLabError(f"tokenizer corpus file {path} does not exist")
        self.tokenizer = tokenizer
        self.seed = seed
        self.dtype = dtype

    def tokenizer_dir(self) -> str:
        return self.tokenizer or str(build_bpe_tokenizer(self.corpus, self.vocab_size))

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.tokenizer_dir())

    def model_dir(self, model_class: Any) -> Path:
        """Build (once, cached) and return the folder holding the saved tiny model."""
        tok_dir = self.tokenizer_dir()
        key = {"config": self.config, "tokenizer": tok_dir, "seed": self.seed, "class": model_class.__name__}

        def build(out: Path) -> None:
            tok = load_tokenizer(tok_dir)
            cfg = dict(self.config)
            model_type = cfg.pop("model_type")
            config = AutoConfig.for_model(
                model_type,
                **cfg,
                vocab_size=len(tok),
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = model_class.from_config(config)
            model.save_pretrained(str(out))
            tok.save_pretrained(str(out))

        other_rank = torch.distributed.is_available() and torch.distributed.is_initialized()
        other_rank = other_rank and torch.distributed.get_rank() != 0
        return cached_dir("backbones", key, build, wait=other_rank)

    def load_model(self, model_class: Any, **kwargs: Any) -> PreTrainedModel:
        folder = str(self.model_dir(model_class))
        return Pretrained(folder, dtype=self.dtype).load_model(model_class, **kwargs)

    def describe(self) -> dict[str, Any]:
        return {"tiny": self.config, "vocab_size": self.vocab_size, "seed": self.seed, "dtype": self.dtype}
