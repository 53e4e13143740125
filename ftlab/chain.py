"""Chaining runs: a finished run's model as the backbone of a new run (sequential fine-tuning, task A then B).

`FromRun` lives here, not in `ftlab.models`, because rebuilding a run needs its method and module,
and model loading must not depend on a method. The run folder's `config.yaml` and
`trainable.safetensors` rebuild its module (`ftlab.saved_run.load_run`); the method is merged into plain
weights (Full, Freeze and GradualUnfreeze are plain already; LoRA is folded in) and saved with the
tokenizer into the ftlab cache, keyed by the folder and a hash of its weights. The new run then loads
that folder through `Pretrained`, like any Hugging Face model, with the model class its own objective
asks for and any method on top (a fresh LoRA on A's merged weights). Methods that cannot merge
(bottleneck adapters, prefix and prompt tuning) are refused with the reason.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ftlab import runfolder
from ftlab.errors import FTLabError
from ftlab.models.backbone import Backbone, Pretrained
from ftlab.models.cache import cached_dir
from ftlab.models.tokenizers import load_tokenizer
from ftlab.saved_run import load_run


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class FromRun(Backbone):
    """The model a finished ftlab run ended with, merged into plain weights.

    Args:
        run: The run folder (its `trainer.default_root_dir`, with config.yaml and trainable.safetensors).
        dtype: Weights dtype of the loaded model.
    """

    def __init__(self, run: str, dtype: str = "float32") -> None:
        self.run = Path(run).expanduser().resolve()
        for name in (runfolder.CONFIG, runfolder.WEIGHTS):
            if not (self.run / name).is_file():
                raise FTLabError(f"FromRun: {self.run / name} not found; name a finished run folder")
        self.dtype = dtype
        self.weights_hash = file_hash(self.run / runfolder.WEIGHTS)
        self._folder: Path | None = None

    def folder(self) -> Path:
        """The merged model and tokenizer, built once per (run folder, weights) and cached."""
        if self._folder is None:
            key = {"run": str(self.run), "weights": self.weights_hash}

            def build(out: Path) -> None:
                module = load_run(self.run)
                if module.objective.has_head:
                    raise FTLabError(f"FromRun: {self.run} trained a head of its own; only plain models carry over")
                merged: Any = module.method.merge(module.model)
                merged.config.use_cache = True
                merged.save_pretrained(str(out))
                module.tokenizer.save_pretrained(str(out))

            self._folder = cached_dir("runs", key, build)
        return self._folder

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(str(self.folder()))

    def load_model(self, model_class: Any, **kwargs: Any) -> PreTrainedModel:
        return Pretrained(str(self.folder()), dtype=self.dtype).load_model(model_class, **kwargs)

    def describe(self) -> dict[str, Any]:
        return {"run": str(self.run), "weights": self.weights_hash, "dtype": self.dtype}
