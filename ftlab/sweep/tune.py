"""The tuning stage of a study: what to search, and the next trials to run given the finished ones.

    tune:
      params:                                   # named hyper-parameters
        lr: {key: model.optimizer.init_args.lr, values: [3.0e-4, 1.0e-3, 3.0e-3]}   # a list of values
        wd: {key: model.optimizer.init_args.weight_decay, low: 0.0, high: 0.1}      # a range (random, tpe)
      sampler: grid                 # grid (default: values in file order), random (seeded) or tpe (Optuna)
      trials: 3                     # the budget: trials per tuned group (grid: default and at most its size)
      batch: 2                      # tpe: trials proposed per round, run side by side (default 1)
      by: [method]                  # axes that define a group sharing one tuning (default: every axis but
                                    # the seed axis, i.e. per cell); a group's trials use its first cell
      seed: 0                       # the trials' seed_everything, and the samplers' seed
      selection_fraction: 0.1       # the selection split (data.init_args.selection_fraction) the trials score
                                    # on; the reported cells hold the same rows out, so both train alike
      overrides: {trainer.max_steps: 20}   # the trials' step budget, or anything else only the trials change
      metric: val/loss              # default: the study's metric and mode (on the selection split)
      pruner: median                # Optuna's MedianPruner: a trial whose selection score at a validation is
                                    # worse than the median of the group's finished trials at that step stops
                                    # there and is never chosen; or {kind: median, startup_trials: 2,
                                    # warmup_steps: 0} (finished trials needed first; no step below
                                    # warmup_steps is pruned)

The study's seeds then run at each group's best values (trials.py). A trial is proposed from the finished
ones only: grid and random trials are all known at once; TPE asks Optuna's TPESampler, rebuilt from the
finished trials with a seed that depends on how many there are, so a rerun proposes the same trials.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

SAMPLERS = ("grid", "random", "tpe")
KNOWN = {
    "params",
    "sampler",
    "trials",
    "batch",
    "by",
    "seed",
    "selection_fraction",
    "overrides",
    "metric",
    "mode",
    "pruner",
}
PRUNERS = ("median",)


@dataclass(frozen=True)
class PrunerSpec:
    kind: str = "median"
    startup_trials: int = 2
    warmup_steps: int = 0


@dataclass(frozen=True)
class Param:
    name: str
    key: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False


@dataclass
class TuneSpec:
    params: list[Param]
    sampler: str = "grid"
    trials: int = 0
    batch: int = 1
    by: list[str] | None = None
    seed: int = 0
    selection_fraction: float = 0.1
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    mode: str | None = None
    pruner: PrunerSpec | None = None


def _pruner(error: Any, raw: Any) -> PrunerSpec | None:
    if raw is None or raw is False or raw == "none":
        return None
    spec = {"kind": raw} if isinstance(raw, str) else raw
    if not isinstance(spec, dict) or not set(spec) <= {"kind", "startup_trials", "warmup_steps"}:
        raise error("tune.pruner", "expected median, or {kind: median, startup_trials: N, warmup_steps: N}")
    kind = str(spec.get("kind", "median"))
    if kind not in PRUNERS:
        raise error("tune.pruner", f"unknown pruner {kind}; use one of {list(PRUNERS)} or none")
    startup, warmup = spec.get("startup_trials", 2), spec.get("warmup_steps", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (startup, warmup)):
        raise error("tune.pruner", f"startup_trials and warmup_steps must be whole numbers >= 0: {startup}, {warmup}")
    return PrunerSpec(kind, startup, warmup)


def _param(error: Any, name: str, spec: Any) -> Param:
    where = f"tune.params.{name}"
    if not isinstance(spec, dict) or not isinstance(spec.get("key"), str):
        raise error(where, "expected {key: KEY, values: [...]} or {key: KEY, low: A, high: B[, log: true]}")
    key = spec["key"].removeprefix("--")
    if "values" in spec:
        if set(spec) != {"key", "values"} or not isinstance(spec["values"], list) or not spec["values"]:
            raise error(where, "values must be a non-empty list, alone beside key")
        return Param(name, key, tuple(spec["values"]))
    if not set(spec) <= {"key", "low", "high", "log", "int"} or not {"low", "high"} <= set(spec):
        raise error(where, "a range needs low and high (and optionally log, int)")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise error(where, f"expected numbers low < high, got {low!r} and {high!r}")
    if spec.get("log") and low <= 0:
        raise error(where, "a log range needs low > 0")
    return Param(name, key, (), float(low), float(high), bool(spec.get("log")), bool(spec.get("int")))


def load_tune(error: Any, raw: Any, axes: list[str], seed_axis: str) -> TuneSpec:
    """The `tune` section; `error(key, message)` makes the study's one-sentence error."""
    if not isinstance(raw, dict):
        raise error("tune", "expected a mapping with params, sampler, trials, ...")
    unknown = sorted(set(raw) - KNOWN)
    if unknown:
        raise error(f"tune.{unknown[0]}", f"unknown key; known keys are {sorted(KNOWN)}")
    params = raw.get("params")
    if not isinstance(params, dict) or not params:
        raise error("tune.params", "name at least one hyper-parameter to tune")
    spec = TuneSpec([_param(error, str(n), p) for n, p in params.items()])
    spec.sampler = str(raw.get("sampler", "grid"))
    if spec.sampler not in SAMPLERS:
        raise error("tune.sampler", f"unknown sampler {spec.sampler}; use one of {list(SAMPLERS)}")
    grid = grid_points(spec) if spec.sampler == "grid" else []
    if spec.sampler == "grid" and any(not p.values for p in spec.params):
        raise error("tune.params", "a grid takes lists of values; ranges need sampler random or tpe")
    spec.trials = int(raw.get("trials") or len(grid))
    if spec.trials < 1:
        raise error("tune.trials", "the budget must be at least one trial (random and tpe need it set)")
    if spec.sampler == "grid" and spec.trials > len(grid):
        raise error("tune.trials", f"{spec.trials} trials exceed the grid's {len(grid)} points")
    spec.batch = int(raw.get("batch", 1))
    by = raw.get("by")
    if by is not None:
        if not isinstance(by, list) or not set(by) <= set(axes) or seed_axis in by:
            raise error("tune.by", f"expected a list of axes from {[a for a in axes if a != seed_axis]}")
        spec.by = [str(a) for a in by]
    spec.seed = int(raw.get("seed", 0))
    spec.selection_fraction = float(raw.get("selection_fraction", 0.1))
    if not 0.0 < spec.selection_fraction < 1.0:
        raise error("tune.selection_fraction", "must be in (0, 1): the trials score on that share of the rows")
    spec.overrides = {str(k).removeprefix("--"): v for k, v in (raw.get("overrides") or {}).items()}
    spec.metric = raw.get("metric")
    spec.mode = raw.get("mode")
    if spec.mode not in (None, "min", "max"):
        raise error("tune.mode", f"must be min or max, got {spec.mode}")
    spec.pruner = _pruner(error, raw.get("pruner"))
    if spec.sampler == "tpe" or spec.pruner is not None:
        try:
            import optuna  # noqa: F401
        except ImportError:
            key = "tune.sampler" if spec.sampler == "tpe" else "tune.pruner"
            raise error(key, "needs Optuna: pip install 'ftlab[tune]'") from None
    return spec


def grid_points(spec: TuneSpec) -> list[dict[str, Any]]:
    """Every combination of the params' values, the first param varying slowest."""
    return [
        dict(zip([p.name for p in spec.params], combo, strict=True))
        for combo in itertools.product(*(p.values for p in spec.params))
    ]


def _draw(rng: random.Random, param: Param) -> Any:
    if param.values:
        return rng.choice(param.values)
    assert param.low is not None and param.high is not None
    if param.integer:
        return rng.randint(int(param.low), int(param.high))
    if param.log:
        import math

        return math.exp(rng.uniform(math.log(param.low), math.log(param.high)))
    return rng.uniform(param.low, param.high)


Pruned = list[tuple[dict[str, Any], dict[int, float]]]
"""Pruned trials of a group: their values and the scores they reported, by step."""


def _tpe(
    spec: TuneSpec, done: list[tuple[dict[str, Any], float | None]], mode: str, n: int, pruned: Pruned
) -> list[dict]:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {
        p.name: CategoricalDistribution(list(p.values))
        if p.values
        else IntDistribution(int(p.low), int(p.high), log=p.log)
        if p.integer
        else FloatDistribution(p.low, p.high, log=p.log)
        for p in spec.params
    }
    startup = max(2, min(10, spec.trials // 2))
    sampler = optuna.samplers.TPESampler(seed=spec.seed * 1000 + len(done), n_startup_trials=startup)
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize", sampler=sampler)
    for params, value in done:
        state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value, state=state))
    for params, reports in pruned:  # TPE ranks a pruned trial by its last report, as in one Optuna process
        state = optuna.trial.TrialState.PRUNED
        trial = optuna.trial.create_trial(params=params, distributions=dists, state=state, intermediate_values=reports)
        study.add_trial(trial)
    return [study.ask(dists).params for _ in range(n)]


def propose(
    spec: TuneSpec, done: list[tuple[dict[str, Any], float | None]], mode: str, pruned: Pruned | None = None
) -> list[dict[str, Any]]:
    """The next trials of one group, given its finished ones (params, value or None if it failed) and its
    pruned ones, in order; empty when the budget is spent. Grid and random return the whole budget at once (as
    long as nothing finished yet, every call returns the same list), TPE one batch per call."""
    pruned = pruned or []
    if spec.sampler == "grid":
        return grid_points(spec)[: spec.trials][len(done) + len(pruned) :]
    if spec.sampler == "random":
        rng = random.Random(spec.seed)
        if all(p.values for p in spec.params):
            grid = grid_points(spec)
            picks = rng.sample(grid, min(spec.trials, len(grid)))
        else:
            picks = [{p.name: _draw(rng, p) for p in spec.params} for _ in range(spec.trials)]
        return picks[len(done) + len(pruned) :]
    left = spec.trials - len(done) - len(pruned)
    return _tpe(spec, done, mode, min(spec.batch, left), pruned) if left > 0 else []


def best(done: list[tuple[dict[str, Any], float | None]], mode: str) -> tuple[dict[str, Any], float] | None:
    """The params of the best finished trial (the first of equals), with its value; None if every one failed."""
    scored = [(params, value) for params, value in done if value is not None]
    if not scored:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(scored, key=lambda item: sign * item[1])
