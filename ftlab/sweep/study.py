"""A study file and its expansion into cells (one cell = one fit run).

    name: methods_sft_tiny            # default: the file's stem
    output: runs/sweeps/methods_sft   # the study folder (default runs/sweeps/<name>)
    base: [experiments/quickstart.yaml]
    overrides: {trainer.max_steps: 40}           # every cell
    axes:                                        # a product, the first axis varying slowest
      method: [experiments/methods/full.yaml, experiments/methods/lora.yaml]
      objective:                                 # an item may bundle configs and overrides
        - {name: dpo, config: [experiments/objectives/dpo.yaml, experiments/data/preference_example.yaml]}
      rank: {key: model.method.init_args.r, values: [4, 8]}
      alpha: {key: model.method.init_args.alpha, values: [8, 16]}
      seed: {key: seed_everything, values: [0, 1, 2]}
    zip: [[rank, alpha]]                         # these axes move together (equal lengths)
    exclude: [{method: full, rank: 8}]           # a cell matching every entry is dropped
    metric: val/loss                             # the results' target metric
    report: [val/text/loss, gen/rougeL_f]        # more columns of the results table (mean ± 95 % CI)
    mode: min
    seed_axis: seed                              # results average over this axis
    launcher: {parallel: 1, slurm: {...}}        # see local.py and slurm.py
    wandb: {project: my-study}                   # optional: W&B logging (offline by default)
    tune: {params: {lr: {key: model.optimizer.init_args.lr, values: [1.0e-4, 1.0e-3]}}, by: [method]}
                                                 # optional: tune per group first, then run the seeds at
                                                 # each group's best values (see tune.py, trials.py)

Config paths are relative to the directory the sweep runs from, or else to the study file's folder.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftlab.errors import FTLabError
from ftlab.sweep.tune import TuneSpec, load_tune

KNOWN = {"name", "output", "base", "overrides", "axes", "zip", "exclude", "metric", "mode", "seed_axis"}
KNOWN |= {"launcher", "wandb", "report", "tune"}


@dataclass(frozen=True)
class Choice:
    """One value of one axis: the configs it adds, the keys it sets, and its label in tables."""

    label: str
    configs: tuple[str, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()


@dataclass
class Cell:
    """One run of the study: base configs plus one choice per axis."""

    axes: dict[str, str]
    configs: list[str]
    overrides: dict[str, Any]


@dataclass
class Study:
    path: Path
    name: str
    output: Path
    base: list[str]
    overrides: dict[str, Any]
    axes: dict[str, list[Choice]]
    zip: list[list[str]] = field(default_factory=list)
    exclude: list[dict[str, list[str]]] = field(default_factory=list)
    metric: str = "val/loss"
    report: list[str] = field(default_factory=list)
    mode: str = "min"
    seed_axis: str = "seed"
    launcher: dict[str, Any] = field(default_factory=dict)
    wandb: dict[str, Any] | None = None
    tune: TuneSpec | None = None  # the tuning stage (tune.py), if any

    def error(self, key: str, message: str) -> FTLabError:
        return FTLabError(f"study {self.path}: {key}: {message}")


def _key(key: str) -> str:
    return str(key).removeprefix("--")


def value_label(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _config_path(study: Study, where: str, path: Any) -> str:
    if not isinstance(path, str) or not path:
        raise study.error(where, f"expected a config file path, got {path!r}")
    if Path(path).is_file():
        return path
    beside = study.path.parent / path
    if beside.is_file():
        return str(beside)
    raise study.error(where, f"config file {path} does not exist")


def _choices(study: Study, name: str, spec: Any) -> list[Choice]:
    where = f"axes.{name}"
    if isinstance(spec, dict) and set(spec) == {"key", "values"}:  # shorthand: one key over values
        if not isinstance(spec["values"], list):
            raise study.error(where, "values must be a list")
        spec = [{"name": value_label(v), "set": {spec["key"]: v}} for v in spec["values"]]
    if not isinstance(spec, list):
        raise study.error(where, "an axis is a list of config files or of {name, config, set} items")
    if not spec:
        raise study.error(where, "the axis is empty")
    out = []
    for i, item in enumerate(spec):
        at = f"{where}[{i}]"
        if isinstance(item, str):
            path = _config_path(study, at, item)
            out.append(Choice(Path(item).stem, (path,)))
            continue
        if not isinstance(item, dict) or not set(item) <= {"name", "config", "set"}:
            raise study.error(at, "expected a config path or a mapping with name, config and set")
        configs = item.get("config") or []
        configs = [configs] if isinstance(configs, str) else configs
        paths = tuple(_config_path(study, f"{at}.config", c) for c in configs)
        sets = item.get("set") or {}
        if not isinstance(sets, dict):
            raise study.error(f"{at}.set", "expected a mapping of keys to values")
        label = item.get("name") or "+".join([Path(c).stem for c in configs] + [value_label(v) for v in sets.values()])
        out.append(Choice(str(label), paths, tuple((_key(k), v) for k, v in sets.items())))
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise study.error(where, f"two values share a label ({labels}); give them distinct names")
    return out


def load_study(path: str | Path) -> Study:
    """Read and check a study file (every config file must exist)."""
    path = Path(path)
    if not path.is_file():
        raise FTLabError(f"study file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    study = Study(path, str(raw.get("name") or path.stem), Path(), [], {}, {})
    if not isinstance(raw, dict):
        raise study.error("(top level)", "expected a mapping")
    unknown = sorted(set(raw) - KNOWN)
    if unknown:
        raise study.error(unknown[0], f"unknown key; known keys are {sorted(KNOWN)}")
    study.output = Path(raw.get("output") or f"runs/sweeps/{study.name}")
    base = raw.get("base") or []
    study.base = [_config_path(study, f"base[{i}]", p) for i, p in enumerate([base] if isinstance(base, str) else base)]
    study.overrides = {_key(k): v for k, v in (raw.get("overrides") or {}).items()}
    axes = raw.get("axes")
    if not isinstance(axes, dict) or not axes:
        raise study.error("axes", "a study needs at least one axis")
    study.axes = {str(name): _choices(study, str(name), spec) for name, spec in axes.items()}
    study.zip = [[str(a) for a in group] for group in raw.get("zip") or []]
    for i, group in enumerate(study.zip):
        missing = [a for a in group if a not in study.axes]
        if missing:
            raise study.error(f"zip[{i}]", f"names no axis {missing[0]}")
        if len({len(study.axes[a]) for a in group}) != 1:
            raise study.error(f"zip[{i}]", "zipped axes must have the same number of values")
    if len({a for g in study.zip for a in g}) != sum(len(g) for g in study.zip):
        raise study.error("zip", "an axis appears in more than one group")
    for i, rule in enumerate(raw.get("exclude") or []):
        if not isinstance(rule, dict) or not rule or not set(rule) <= set(study.axes):
            raise study.error(f"exclude[{i}]", f"expected a mapping from axis names {sorted(study.axes)} to labels")
        study.exclude.append({str(a): [str(v) for v in (v if isinstance(v, list) else [v])] for a, v in rule.items()})
    study.metric = str(raw.get("metric", study.metric))
    report = raw.get("report") or []
    if not isinstance(report, list) or not all(isinstance(k, str) and k for k in report):
        raise study.error("report", f"expected a list of metric names, got {report!r}")
    study.report = [k for k in report if k != study.metric]
    study.mode = str(raw.get("mode", study.mode))
    if study.mode not in ("min", "max"):
        raise study.error("mode", f"must be min or max, got {study.mode}")
    study.seed_axis = str(raw.get("seed_axis", study.seed_axis))
    study.launcher = dict(raw.get("launcher") or {})
    study.wandb = raw.get("wandb") or None
    if raw.get("tune") is not None:
        study.tune = load_tune(study.error, raw["tune"], list(study.axes), study.seed_axis)
    return study


def _blocks(study: Study) -> list[list[dict[str, Choice]]]:
    """Each axis, or each zipped group of axes, as a list of {axis: choice} steps, in file order."""
    zipped = {a: g for g in study.zip for a in g}
    blocks, seen = [], set()
    for name, choices in study.axes.items():
        group = zipped.get(name, [name])
        if group[0] in seen:
            continue
        seen.update(group)
        blocks.append([{a: study.axes[a][i] for a in group} for i in range(len(choices))])
    return blocks


def expand(study: Study) -> tuple[list[Cell], list[Cell]]:
    """All cells in a stable order (first axis slowest), and the cells that the exclusions dropped."""
    cells, excluded = [], []
    for combo in itertools.product(*_blocks(study)):
        chosen = {a: c for step in combo for a, c in step.items()}
        chosen = {a: chosen[a] for a in study.axes}  # file order, whatever the zipping
        overrides = dict(study.overrides)
        for choice in chosen.values():
            overrides.update(choice.overrides)
        cell = Cell(
            axes={a: c.label for a, c in chosen.items()},
            configs=[*study.base, *(p for c in chosen.values() for p in c.configs)],
            overrides=overrides,
        )
        dropped = any(all(cell.axes[a] in labels for a, labels in rule.items()) for rule in study.exclude)
        (excluded if dropped else cells).append(cell)
    return cells, excluded
