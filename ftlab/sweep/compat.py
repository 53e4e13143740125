"""Compose each cell's config without instantiating anything, and find cells whose parts cannot work together.

The config is parsed by the run's own parser (LightningCLI composed as the run's, `ftlab.run_parser`, with
instantiation switched off), so a mistyped key
fails here, before anything launches. Compatibility is decided by `ftlab.module.check_composition`, the
run's own check, on parts built without loading anything: the method itself (methods are plain objects whose
constructors load no model, and some set a capability per instance, as LoReFT's `supports_packing`), the
real Lightning strategy (constructing one starts no process), and stand-ins carrying the objective's and
datamodule's capability attributes. No model, tokenizer or data is loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from ftlab.errors import FTLabError
from ftlab.module import check_composition
from ftlab.run_parser import COMPOSITION, add_run_options

CAPABILITIES = (
    "supports_disable",
    "supports_fsdp",
    "supports_quantized",
    "supports_packing",
    "trains_backbone",
    "schedules_trainable",
    "batch_type",
    "also_consumes",
    "consumes",
    "has_head",
    "needs_reference",
    "needs_rollouts",
)


class _ParseOnly(LightningCLI):
    """The run's parser that parses and stops: no seed, no output placement, no instantiation."""

    def __init__(self, args: list[str], run: bool = False) -> None:
        super().__init__(**COMPOSITION, args=args, run=run)

    def add_arguments_to_parser(self, parser: Any) -> None:
        add_run_options(parser)

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


def _init_args(spec: Namespace) -> dict[str, Any]:
    args = spec.get("init_args") or {}
    return args.as_dict() if isinstance(args, Namespace) else dict(args)


def _method(spec: Namespace) -> Any:
    """The method itself, built from its init_args (cheap: no model is loaded), so that capabilities set per
    instance count; a stand-in from class attributes when it cannot be built from the parsed values alone."""
    cls = _import(spec.class_path)
    try:
        return cls(**_init_args(spec))
    except FTLabError:
        raise  # a bad value: the run would refuse it with this very sentence
    except Exception:
        return _standin(cls)


def _strategy(spec: Any) -> Any:
    """The Lightning strategy the run would get, so that `ftlab.distributed` answers as in the run (DDP or
    not, finding unused parameters or not, sharded or not); a bare object of a type so named when it
    cannot be built here (`auto`, a name from a plugin that is not installed, a constructor that refuses)."""
    from lightning.pytorch.strategies import StrategyRegistry

    if isinstance(spec, Namespace) and "class_path" in spec:
        cls = _import(spec.class_path)
        args = _init_args(spec)
        try:
            return cls(**args)
        except Exception:
            bare = cls.__new__(cls)  # isinstance holds; DDP's own keyword arguments are where it keeps them
            bare._ddp_kwargs = args
            return bare
    name = str(spec)
    if name in StrategyRegistry:
        try:
            return StrategyRegistry.get(name)
        except Exception:
            return type(StrategyRegistry[name]["strategy"].__name__, (), {})()
    return type(name, (), {})()


def _datamodule(spec: Namespace) -> Any:
    """A stand-in datamodule; a mixture (`tasks`) answers with its first task's batch kind and packing, as
    MixtureDataModule does once built (it refuses tasks that differ in either)."""
    args = _init_args(spec)
    tasks = args.get("tasks")
    if isinstance(tasks, dict) and tasks and not hasattr(_import(spec.class_path), "batch_type"):
        first = next(iter(tasks.values()))
        inner = _datamodule(first if isinstance(first, Namespace) else Namespace(**first))
        return _standin(_import(spec.class_path), batch_type=inner.batch_type, packing=inner.packing)
    return _standin(_import(spec.class_path), packing=bool(args.get("packing", False)))


def incompatibility(config: Namespace) -> str | None:
    """Why the composed parts cannot work together, in one sentence, or None when they can."""
    model = config.model
    objective = _standin(_import(model.objective.class_path))
    data = config.get("data")
    datamodule = _datamodule(data) if isinstance(data, Namespace) and "class_path" in data else None
    try:
        method = _method(model.method)
        check_composition(method, objective, datamodule, _strategy(config.trainer.get("strategy", "auto")))
    except FTLabError as err:
        return str(err)
    return None
