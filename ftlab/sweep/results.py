"""Results of a study: every cell's summary.json into a CSV, a Markdown table and plots.

    <study dir>/results/cells.csv    one row per cell: axis labels, costs, every logged metric
    <study dir>/results/table.csv    one row per group of cells that differ only in the seed axis:
                                     mean and 95 % confidence half-width of each number
    <study dir>/results/table.md     the same, the target metric (and the study's `report` metrics) as
                                     mean ± half-width
    <study dir>/results/*.png        the target metric against trainable parameters, peak memory, wall time

Each file is written to a temporary name in the same folder and renamed into place, so `ftlab sweep results`
run while cells still finish (or killed) never leaves a half-written table or image.

The half-width is t(0.975, n-1) · s / √n, with s the sample standard deviation over the n seeds
(Student's t, as the seeds are few); a group of one cell has none. The t quantile is computed here by
integrating the density (scipy is not a dependency, and this is one number).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ftlab import runfolder
from ftlab.sweep.manifest import RUNS, read

COSTS = ("trainable_params", "total_params", "peak_memory_mb", "wall_seconds", "steps", "tokens_per_sec")


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom.

    With x = √df·tan(φ) the density becomes C·cos^(df-1)(φ) dφ, C = Γ((df+1)/2) / (√π·Γ(df/2)), smooth on
    [0, π/2): the CDF is 0.5 + C·∫₀^φ cos^(df-1), by Simpson's rule; bisection finds φ."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(math.pi)

    def cdf_at(phi: float, n: int = 1000) -> float:
        h = phi / n
        f = [math.cos(i * h) ** (df - 1) for i in range(n + 1)]
        return 0.5 + c * h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, math.pi / 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf_at(mid) < p else (lo, mid)
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float | None]:
    """Mean and confidence half-width (None for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)


def collect(study_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One row per cell of the manifest: axes, id, status, costs and metrics (empty for unfinished cells)."""
    meta, entries = read(study_dir)
    rows = []
    for entry in entries:
        run = study_dir / RUNS / entry.id
        row: dict[str, Any] = {**entry.axes, "id": entry.id}
        if entry.tuned:  # the values its group's tuning chose, and how many trials that took
            row |= {"tuned": tuned_label(entry.tuned), "trials": entry.trials}
        summary_path = run / runfolder.SUMMARY
        if (run / runfolder.DONE).is_file() and summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            row |= {"status": "done", **{k: summary.get(k) for k in COSTS}, **summary.get("metrics", {})}
            if summary.get("peak_device_memory_mb") is not None:  # the accelerator's peak, where there was one
                row["peak_memory_mb"] = summary["peak_device_memory_mb"]
        else:
            row["status"] = "failed" if run.exists() else "missing"
        rows.append(row)
    return meta, rows


def tuned_label(values: dict[str, Any]) -> str:
    from ftlab.sweep.study import value_label

    return ", ".join(f"{k}={value_label(v)}" for k, v in values.items())


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def group(meta: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished cells grouped over the seed axis: per number, `<key>` (mean), `<key>_ci` and `n`."""
    keys = [a for a in meta["axes"] if a != meta["seed_axis"]]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "done":
            groups.setdefault(tuple(row[a] for a in keys), []).append(row)
    out = []
    for labels, members in groups.items():
        item: dict[str, Any] = {**dict(zip(keys, labels, strict=True)), "n": len(members)}
        if "tuned" in members[0]:
            item["tuned"] = members[0]["tuned"]
        numbers = sorted({k for m in members for k, v in m.items() if _number(v) is not None})
        for key in numbers:
            values = [_number(m.get(k)) for m in members for k in [key]]
            if all(v is not None for v in values):
                item[key], item[f"{key}_ci"] = mean_ci([float(v) for v in values])
        out.append(item)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Atomically (a reader never sees half a table), like every report ftlab writes."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    runfolder.write_text(path, text.getvalue())


def _fmt(value: Any, ci: Any = None) -> str:
    if value is None:
        return "–"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return text if ci is None else f"{text} ± {ci:.2g}"


def markdown(meta: dict[str, Any], groups: list[dict[str, Any]]) -> str:
    keys = [a for a in meta["axes"] if a != meta["seed_axis"]]
    metric, report = meta["metric"], meta.get("report") or []
    tuned = any("tuned" in g for g in groups)
    head = [*keys, *(["tuned (trials)"] if tuned else []), "n", f"{metric} (mean ± 95% CI)", *report]
    head += ["trainable params", "peak memory (MB)", "wall (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sign = -1.0 if meta["mode"] == "max" else 1.0  # best first
    for g in sorted(groups, key=lambda g: (g.get(metric) is None, sign * (g.get(metric) or 0.0))):
        cells = [str(g[k]) for k in keys]
        cells += [f"{g['tuned']} ({g['trials']:.0f})" if "tuned" in g else "–"] if tuned else []
        cells += [str(g["n"]), _fmt(g.get(metric), g.get(f"{metric}_ci"))]
        cells += [_fmt(g.get(k), g.get(f"{k}_ci")) for k in report]
        cells += [_fmt(g.get("trainable_params"))]
        cells += [_fmt(g.get(k), g.get(f"{k}_ci")) for k in ("peak_memory_mb", "wall_seconds")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_note(study_dir: Path) -> str:
    """A note when the host was busier than its CPUs while runs went (wall times then include waiting)."""
    from ftlab.sweep.local import LOAD

    path = study_dir / LOAD
    if not path.is_file():
        return ""
    seen = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    worst = max(seen, key=lambda r: r["load1"] / r["cpus"])
    if worst["load1"] <= worst["cpus"]:
        return ""
    return (
        f"\nThe host was loaded while runs went: 1-minute load average up to {worst['load1']:.1f} on "
        f"{worst['cpus']} CPUs ({worst['parallel']} runs of this study at once): wall times include waiting "
        "for the CPU; compare them within a seed group's ± spread only.\n"
    )


def trials_table(study_dir: Path, meta: dict[str, Any], out: Path) -> str:
    """results/trials.csv (every tuning trial and its selection score) and a Markdown section of each
    group's trials; empty when the study has no tuning stage."""
    from ftlab.sweep.manifest import read_entries
    from ftlab.sweep.trials import TRIALS, pruned_reports

    path = study_dir / TRIALS
    if not path.is_file():
        return ""
    rows = []
    for entry in read_entries(path):
        summary = Path(entry.run_dir) / runfolder.SUMMARY
        value = None
        if (Path(entry.run_dir) / runfolder.DONE).is_file() and summary.is_file():
            value = json.loads(summary.read_text()).get("metrics", {}).get(meta["metric"])
        reports = pruned_reports(entry)
        pruned = max(reports) if reports else None  # the step it stopped at
        row = {"group": entry.group, "values": tuned_label(entry.tuned), "selection": value, "pruned_at": pruned}
        rows.append({**row, "id": entry.id})
    write_csv(out / "trials.csv", rows)
    lines = ["", "## Tuning trials (scored on the selection split)", "", f"| group | values | {meta['metric']} |"]
    lines.append("|---|---|---|")
    for r in rows:
        note = f" (pruned at step {r['pruned_at']})" if r["pruned_at"] is not None else ""
        lines.append(f"| {r['group']} | {r['values']} | {_fmt(_number(r['selection']))}{note} |")
    return "\n".join(lines) + "\n"


def write_results(study_dir: Path) -> Path:
    """Write the CSVs, the table and the plots under <study dir>/results; returns that folder."""
    from ftlab.sweep.plots import plot_all

    meta, rows = collect(study_dir)
    groups = group(meta, rows)
    out = study_dir / "results"
    write_csv(out / "cells.csv", rows)
    write_csv(out / "table.csv", groups)
    table = markdown(meta, groups)
    pending = [r["id"] for r in rows if r["status"] != "done"]
    note = f"\n{len(pending)} of {len(rows)} cells have no result yet: {', '.join(pending)}\n" if pending else ""
    skipped = meta.get("skipped") or []
    note += "".join(f"\nskipped {s['axes']}: {s['reason']}" for s in skipped) + ("\n" if skipped else "")
    note += load_note(study_dir)
    tuning = trials_table(study_dir, meta, out)
    runfolder.write_text(out / "table.md", f"# {meta['name']}\n\n{table}{note}{tuning}")
    plot_all(meta, groups, out)
    return out
