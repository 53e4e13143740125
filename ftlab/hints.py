"""Pointers from an error message to the shipped YAML that fits: which `experiments/data/*.yaml` yields a batch kind."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import yaml

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _shown(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive
        return str(path)


def data_yamls_for(batch_type: type) -> list[str]:
    """The shipped data YAMLs (experiments/data/*.yaml) whose datamodule yields `batch_type` batches, as paths
    relative to the working directory; empty where ftlab runs without its experiments folder (a wheel install)."""
    found: list[str] = []
    for path in sorted((EXPERIMENTS / "data").glob("*.yaml")):
        try:
            class_path = (yaml.safe_load(path.read_text()) or {})["data"]["class_path"]
            module, name = class_path.rsplit(".", 1)
            kind = getattr(getattr(importlib.import_module(module), name), "batch_type", None)
        except Exception:  # a hint must never replace the error it decorates
            continue
        if kind is batch_type:
            found.append(_shown(path))
    return found


def data_hint(batch_type: type) -> str:
    """ "; for PreferenceBatch batches compose a data YAML such as experiments/data/preference_example.yaml" or ""."""
    paths = data_yamls_for(batch_type)
    if not paths:
        return ""
    return f"; for {batch_type.__name__} batches compose a data YAML such as {' or '.join(paths[:3])}"
