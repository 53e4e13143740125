"""`python -m ftlab export RUN_DIR [--out DIR]`: a finished run as plain Hugging Face folders.

Rebuilds the run's module from its `config.yaml`, loads `trainable.safetensors`, and writes
- `<out>/adapter`: the peft adapter folder (peft methods: LoRA, QLoRA, prefix, prompt), loadable with
  `PeftModel.from_pretrained(base, <out>/adapter)`; a base that only ftlab's cache holds (a tiny backbone built
  from config, a chained run) is written to `<out>/base` and named `base` in the adapter's config, so the folder
  works on another machine (`AutoModelForCausalLM.from_pretrained(<out>/base)`);
- `<out>/merged`: the method folded into plain weights (Full, Freeze, GradualUnfreeze, LoRA), loadable
  with `AutoModelForCausalLM.from_pretrained(<out>/merged)`, with the tokenizer beside it.
Methods that can do neither (bottleneck adapters) are refused with the reason.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from peft import PeftConfig, PeftModel

from ftlab.errors import FTLabError
from ftlab.models.cache import cache_root
from ftlab.module import FineTuneModule
from ftlab.saved_run import load_run


def portable_base(module: FineTuneModule, out: Path) -> Path | None:
    """A base model that ftlab built into its cache (a tiny backbone, a chained run) exists on this machine only:
    copy it with the tokenizer to `<out>/base` and name it `base` in the adapter's config, so the export folder
    works anywhere. A hub id or a folder of the user's own is named as given (None)."""
    configs = module.model.peft_config
    source = Path(next(iter(configs.values())).base_model_name_or_path or "")
    cache = cache_root().resolve()
    if not source.is_dir() or cache not in source.resolve().parents:
        return None
    base = out / "base"
    shutil.copytree(source, base, dirs_exist_ok=True)
    module.tokenizer.save_pretrained(str(base))
    saved = PeftConfig.from_pretrained(str(out / "adapter"))
    saved.base_model_name_or_path = "base"  # relative: load it as <export folder>/base
    saved.save_pretrained(str(out / "adapter"))
    return base


def save_adapter(module: FineTuneModule, run_dir: Path, folder: Path) -> None:
    """The peft adapter folder; an adapter whose initialisation rewrote the base weights (LoRA's pissa, olora)
    is written as the plain LoRA of its change since the start (peft's conversion, from the run as it began),
    so that it applies to the original base."""
    if not getattr(module.method, "rewrites_base", False):
        module.model.save_pretrained(str(folder))
        return
    with tempfile.TemporaryDirectory() as tmp:
        load_run(run_dir, trained=False).model.save_pretrained(tmp)
        module.model.save_pretrained(str(folder), path_initial_model_for_weight_conversion=tmp)


def export(run_dir: Path, out: Path) -> dict[str, Path]:
    module = load_run(run_dir)
    if module.objective.has_head:
        raise FTLabError(f"objective {module.objective.name} has a head of its own; export writes plain models only")
    written: dict[str, Path] = {}
    if isinstance(module.model, PeftModel):
        save_adapter(module, run_dir, out / "adapter")
        module.tokenizer.save_pretrained(str(out / "adapter"))
        written["adapter"] = out / "adapter"
        base = portable_base(module, out)
        if base is not None:
            written["base"] = base
    try:
        merged: Any = module.method.merge(module.model)
    except FTLabError:
        if not written:
            raise
    else:
        merged.config.use_cache = True
        merged.save_pretrained(str(out / "merged"))
        module.tokenizer.save_pretrained(str(out / "merged"))
        written["merged"] = out / "merged"
    return written


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="ftlab export", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run folder (trainer.default_root_dir)")
    parser.add_argument("--out", type=Path, default=None, help="where to write; default <run_dir>/export")
    args = parser.parse_args(argv)
    for kind, path in export(args.run_dir, args.out or args.run_dir / "export").items():
        print(f"{kind}: {path}")
