"""Plots of a study: the target metric against each cost, one point per group, the Pareto front marked.

With tuning, each group is its cells at their tuned values (the cells are the only runs the results read).
Labels are placed so that they do not overlap each other or the points (place_labels).
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


# where a label may go, in points from its point: right, above, left, below, then the diagonals, then farther
OFFSETS = [
    (dx * k, dy * k)
    for k in (1, 2, 3, 4)
    for dx, dy in ((5, 3), (5, 10), (-5, 3), (5, -10), (-5, 10), (-5, -10), (5, 17), (5, -17))
]


def place_labels(ax: Any, labels: list[str], points: list[tuple[float, float]]) -> list[Any]:
    """Annotate each point with its label where its box overlaps no label placed before it and no point
    (in display coordinates, once the axes' limits are final); the least overlapping spot if none is free."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    marks = [ax.transData.transform(p) for p in points]
    placed: list[Any] = []
    for label, point in sorted(zip(labels, points, strict=True), key=lambda item: item[1]):
        best_text, best_cost = None, None
        for dx, dy in OFFSETS:
            text = ax.annotate(
                label, point, textcoords="offset points", xytext=(dx, dy), fontsize=7, ha="left" if dx > 0 else "right"
            )
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            cost = sum(box.overlaps(other) for other in placed) * 10
            cost += sum(box.contains(x, y) for x, y in marks)
            if best_cost is None or cost < best_cost:
                if best_text is not None:
                    best_text.remove()
                best_text, best_cost, best_box = text, cost, box
            else:
                text.remove()
            if cost == 0:
                break
        placed.append(best_box)
    return placed


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
        ax.step([points[i][0] for i in front], [points[i][1] for i in front], where="post", color="tab:red", lw=1)
        if cost == "trainable_params" and min(x for x, _ in points) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.set_ylabel(metric)
        ax.set_title(f"{meta['name']}: {metric} vs {title} (red: Pareto front)", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        place_labels(ax, [_label(meta, g) for g in items], points)
        path = out / f"{metric.replace('/', '_')}_vs_{cost}.png"
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    return written
