"""A finished run folder read back as its module: the config rebuilds it, `trainable.safetensors` fills it.

Export, chained runs (`ftlab.chain.FromRun`) and reward models trained by ftlab (`ftlab.rewards.sources`)
read runs this way.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from jsonargparse import ArgumentParser

from ftlab import runfolder
from ftlab.errors import FTLabError
from ftlab.module import FineTuneModule


def load_run(run_dir: Path, trained: bool = True) -> FineTuneModule:
    """The run's module with its trained weights, built from the run folder alone (`trained=False`: as the
    run started, before its first step; export reads it so for the adapters that rewrite the base)."""
    config_path, weights = run_dir / runfolder.CONFIG, run_dir / runfolder.WEIGHTS
    for path in (config_path, weights):
        if not path.is_file():
            raise FTLabError(f"{path} not found: export needs a finished run folder")
    config = yaml.safe_load(config_path.read_text())
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(FineTuneModule, "model", fail_untyped=False)
    parsed = parser.parse_object({"model": config["model"]})
    module: FineTuneModule = parser.instantiate_classes(parsed).model
    module.configure_model()
    if trained:
        module.load_trainable(weights)
    module.eval()
    return module
