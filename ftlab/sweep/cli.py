"""`python -m ftlab sweep STUDY.yaml [--launcher local|slurm] [--parallel N] [--dry-run]` and
`python -m ftlab results STUDY_DIR`.

A sweep expands the study, composes every cell's config with the run's own parser (no model is loaded),
lists and skips the cells whose parts cannot work together, writes the manifest, and launches the rest.
A local sweep ends by writing the results; after a SLURM sweep, run `ftlab results` once the array is done.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import yaml

from ftlab.errors import FTLabError
from ftlab.sweep import manifest
from ftlab.sweep.study import Study, expand, load_study
from ftlab.sweep.tune import propose

LAUNCHERS = ("local", "slurm")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftlab", description="ablation studies over ftlab runs")
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="expand a study file and launch its cells")
    sweep.add_argument("study", help="the study file (experiments/sweeps/*.yaml)")
    sweep.add_argument("--launcher", default=None, help="local (default) or slurm")
    sweep.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="local: runs at once (default: the study's launcher.parallel, else 1)",
    )
    sweep.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every cell (repeatable)"
    )
    sweep.add_argument("--dry-run", action="store_true", help="list the cells and commands; launch nothing")
    # the job that a SLURM tuning round leaves behind calls the sweep again with this: trials that were tried
    # and failed count as failed instead of being submitted again
    sweep.add_argument("--continue", dest="continuing", action="store_true", help=argparse.SUPPRESS)
    results = sub.add_parser("results", help="aggregate a study folder into CSV, a Markdown table and plots")
    results.add_argument("study_dir", help="the study folder (the study file's `output`)")
    return parser


def parallel_runs(study: Study, parallel: int | None) -> int:
    """Runs at once on this machine: --parallel, else the study's launcher.parallel, else 1."""
    return max(1, parallel if parallel is not None else int(study.launcher.get("parallel", 1)))


def sweep(
    study_path: str,
    launcher: str | None,
    parallel: int | None,
    dry_run: bool,
    sets: list[str],
    continuing: bool = False,
) -> int:
    from ftlab.sweep.compat import Composer, incompatibility

    study = load_study(study_path)
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise FTLabError(f"--set {item}: expected KEY=VALUE")
        study.overrides[key.removeprefix("--")] = yaml.safe_load(value)
    launcher = launcher or str(study.launcher.get("default", "local"))
    if launcher not in LAUNCHERS:
        raise FTLabError(f"study {study.path}: launcher: unknown launcher {launcher}; use one of {list(LAUNCHERS)}")
    cells, excluded = expand(study)
    entries = manifest.build(study, cells)
    composer, kept, skipped, config = Composer(), [], [], None
    for entry in entries:
        try:
            parsed = composer.parse(entry.argv)
        except FTLabError as err:
            raise FTLabError(f"study {study.path}: cell {entry.id} does not parse: {err}") from None
        reason = incompatibility(parsed)
        if reason:
            skipped.append({"id": entry.id, "axes": entry.axes, "reason": reason})
        else:
            config = config or parsed
            kept.append(entry)
    kept_cells = [cells[entry.index] for entry in kept]
    for index, entry in enumerate(kept):
        entry.index = index
    print(f"ftlab sweep: {study.name}: {len(kept)} cells, {len(excluded)} excluded, {len(skipped)} incompatible")
    for item in skipped:
        print(f"  skip {item['id']}: {item['reason']}")
    if not kept:
        raise FTLabError(f"study {study.path}: axes: no cell is left to run")
    if study.tune is not None:
        from ftlab.sweep import trials

        first = next(iter(trials.groups(study, kept_cells).values()))
        values = propose(study.tune, [], trials.metric(study)[1])[0]
        probe = trials.trial_entry(study, first, values)
        try:
            composer.parse(probe.argv)
        except FTLabError as err:
            raise FTLabError(f"study {study.path}: tune: trial {probe.id} does not parse: {err}") from None
        if dry_run:
            print(f"  tuning {len(trials.groups(study, kept_cells))} groups; first trial: {probe.command}")
            print("  the cells below then run at their group's best values")
        else:
            study.output.mkdir(parents=True, exist_ok=True)
            if launcher == "slurm":
                again = trials.again_argv(str(study.path), sets)
                if trials.submit_round(study, kept_cells, config, again, continuing):
                    return 0
            else:
                trials.run_local(study, kept_cells, parallel_runs(study, parallel))
            tuned, info, bad = trials.tuned_cells(study, kept_cells)
            skipped += bad
            kept = manifest.build(study, tuned)
            for entry, item in zip(kept, info, strict=True):
                entry.group, entry.tuned, entry.trials = item["group"], item["tuned"], item["trials"]
            if not kept:
                raise FTLabError(
                    f"study {study.path}: tune: no group has a finished trial; see {study.output / 'logs'}"
                )
    if dry_run:
        for entry in kept:
            print(f"  {entry.id}: {entry.command}")
        if launcher == "slurm":
            from ftlab.sweep.slurm import render

            print(render(study, config))
        return 0
    manifest.write(study, kept, skipped)
    if launcher == "slurm":
        from ftlab.sweep.slurm import submit

        submit(study, kept, config)
        print(f"ftlab sweep: when the array is done: python -m ftlab results {shlex.quote(str(study.output))}")
        return 0
    from ftlab.sweep.local import run_local
    from ftlab.sweep.results import write_results

    status = run_local(kept, Path(study.output), parallel_runs(study, parallel))
    out = write_results(Path(study.output))
    failed = [cid for cid, s in status.items() if s.startswith("failed")]
    print(f"ftlab sweep: {len(status) - len(failed)} of {len(status)} cells done; results in {out}")
    for cid in failed:
        print(f"  failed {cid}: see {Path(study.output) / manifest.LOGS / (cid + '.log')}")
    return 1 if failed else 0


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    if args.command == "results":
        from ftlab.sweep.results import write_results

        out = write_results(Path(args.study_dir))
        print((out / "table.md").read_text())
        print(f"ftlab results: {out}")
        return
    code = sweep(args.study, args.launcher, args.parallel, args.dry_run, args.set, args.continuing)
    if code:
        raise SystemExit(code)
