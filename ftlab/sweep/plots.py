"""Plots of a study: the target metric against each cost, one point per group, the Pareto front marked.

A group is on the Pareto front when no other group is at least as cheap and at least as good, and strictly
better in one of the two. Points carry 95 % confidence bars over seeds where there are several.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftlab import runfolder

COSTS = {
    "trainable_params": "trainable parameters",
    "peak_memory_mb": "peak memory (MB)",
    "wall_seconds": "wall time (s)",
}


def pareto(points: list[tuple[float, float]], mode: str = "min") -> list[int]:
    """Indices of the points (cost, metric) that no other point dominates; lower cost is better, and a
    lower metric when mode is min (higher when max). Sorted by cost."""
    sign = 1.0 if mode == "min" else -1.0
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and sign * y2 <= sign * y) and (x2 < x or sign * y2 < sign * y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _save(fig: Any, path: Path) -> None:
    """PNG to a temporary name in the same folder, synced and renamed into place: never a half-written image."""
    runfolder.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def _label(meta: dict[str, Any], group: dict[str, Any]) -> str:
    return "/".join(str(group[a]) for a in meta["axes"] if a != meta["seed_axis"])


def plot_all(meta: dict[str, Any], groups: list[dict[str, Any]], out: Path) -> list[Path]:
    """One PNG per cost with a value in every group; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = meta["metric"]
    usable = [g for g in groups if g.get(metric) is not None]
    written = []
    for cost, title in COSTS.items():
        items = [g for g in usable if g.get(cost) is not None]
        if not items:
            continue
        points = [(float(g[cost]), float(g[metric])) for g in items]
        front = pareto(points, meta["mode"])
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for i, (g, (x, y)) in enumerate(zip(items, points, strict=True)):
            on_front = i in front
            ax.errorbar(
                x, y, yerr=g.get(f"{metric}_ci"), fmt="o", capsize=3, color="tab:red" if on_front else "tab:blue"
            )
            ax.annotate(_label(meta, g), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.step([points[i][0] for i in front], [points[i][1] for i in front], where="post", color="tab:red", lw=1)
        if cost == "trainable_params" and min(x for x, _ in points) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.set_ylabel(metric)
        ax.set_title(f"{meta['name']}: {metric} vs {title} (red: Pareto front)", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{metric.replace('/', '_')}_vs_{cost}.png"
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    return written
