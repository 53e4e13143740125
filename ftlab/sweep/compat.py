"""Compose each cell's config without instantiating anything, and find cells whose parts cannot work together.

The config is parsed by the run's own parser (FTLabCLI with instantiation switched off), so a mistyped key
fails here, before anything launches. Compatibility is decided by `ftlab.module.check_composition` on
stand-ins that carry only the classes' capability attributes: no model, tokenizer or data is loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from typing import Any

from jsonargparse import Namespace

from ftlab.cli import FTLabCLI
from ftlab.errors import FTLabError
from ftlab.module import check_composition

CAPABILITIES = (
    "supports_disable",
    "supports_fsdp",
    "supports_quantized",
    "supports_packing",
    "trains_backbone",
    "batch_type",
    "has_head",
    "needs_reference",
    "needs_rollouts",
)


class _ParseOnly(FTLabCLI):
    """FTLabCLI that parses and stops: no seed, no output placement, no instantiation."""

    def _set_seed(self) -> None:
        pass

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


class Composer:
    """Parses cells' arguments with one parser (built once: about a second)."""

    def __init__(self) -> None:
        self._cli: _ParseOnly | None = None

    def parse(self, args: list[str]) -> Namespace:
        """The composed config of `--config ... --key=value` arguments; FTLabError when they do not parse."""
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                if self._cli is None:
                    self._cli = _ParseOnly(args=args, run=False)
                else:
                    self._cli.parse_arguments(self._cli.parser, args)
        except SystemExit:
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            raise FTLabError(lines[-1] if lines else "the arguments do not parse") from None
        return self._cli.config


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise FTLabError(f"class {class_path} cannot be imported: {err}") from None


def _standin(cls: type, **extra: Any) -> Any:
    """An object that answers the capability questions as `cls` does, built without calling `cls`."""
    attrs = {k: getattr(cls, k) for k in CAPABILITIES if hasattr(cls, k)}
    return type(cls.__name__, (), {"name": cls.__name__, "check_data": lambda self, dm: None, **attrs, **extra})()


def _strategy_name(strategy: Any) -> str:
    if isinstance(strategy, Namespace) and "class_path" in strategy:
        return strategy.class_path.rsplit(".", 1)[-1]
    text = str(strategy)
    return "FSDPStrategy" if text.startswith("fsdp") else text  # Lightning's registered fsdp* names


def incompatibility(config: Namespace) -> str | None:
    """Why the composed parts cannot work together, in one sentence, or None when they can."""
    model = config.model
    method = _standin(_import(model.method.class_path))
    objective = _standin(_import(model.objective.class_path))
    data = config.get("data")
    datamodule = None
    if isinstance(data, Namespace) and "class_path" in data:
        packing = bool((data.get("init_args") or Namespace()).get("packing", False))
        datamodule = _standin(_import(data.class_path), packing=packing)
    strategy = type(_strategy_name(config.trainer.get("strategy", "auto")), (), {})()
    try:
        check_composition(method, objective, datamodule, strategy)
    except FTLabError as err:
        return str(err)
    return None
