"""The run folder (`trainer.default_root_dir`): names of what a run writes, written atomically.

    config.yaml            the resolved config; `python -m ftlab fit --config config.yaml` replays it
    checkpoints/*.ckpt     Lightning checkpoints holding trainable weights only (plus optimizer state)
    trainable.safetensors  the final trainable weights
    summary.json           what the run was and what it measured (see RunReport)
    logs/                  logger output (metrics.csv; W&B offline files)
    DONE                   written last, only when fit ended normally

Everything is written to a temporary name in the same folder and renamed into place, so a killed
run never leaves a half-written file that a later reader would trust. Text written here passes
through `redact`: the value of any environment variable whose name says it is a secret (API keys,
tokens, passwords) is replaced by its name, so a key that found its way into a config is never saved.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CONFIG = "config.yaml"
SUMMARY = "summary.json"
WEIGHTS = "trainable.safetensors"
DONE = "DONE"
CHECKPOINTS = "checkpoints"
LOGS = "logs"


SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


def secrets() -> dict[str, str]:
    """Environment variables that hold secrets, by name (values of 6 characters or more)."""
    not_secret = ("_SOCK", "_PATH", "_DIR", "_FILE")  # where a secret lives, not the secret
    return {k: v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 6 and not k.endswith(not_secret)}


def redact(text: str) -> str:
    """`text` with every secret's value (also JSON-escaped) replaced by `<redacted:NAME>`."""
    for name, value in sorted(secrets().items(), key=lambda kv: -len(kv[1])):
        for form in {value, json.dumps(value)[1:-1]}:
            text = text.replace(form, f"<redacted:{name}>")
    return text


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(redact(json.dumps(data, indent=2, sort_keys=True)) + "\n"))


def write_text(path: Path, text: str, redact_secrets: bool = True) -> None:
    """Atomically; secrets redacted unless the text is something to execute (a command that needs them)."""
    _atomic(path, lambda tmp: Path(tmp).write_text(redact(text) if redact_secrets else text))


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", **(metadata or {})}))


def weights_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
