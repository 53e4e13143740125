"""Results: Student-t confidence intervals on hand-computed numbers, Pareto fronts, grouping over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftlab.sweep.manifest import MANIFEST, RUNS, STUDY
from ftlab.sweep.plots import pareto
from ftlab.sweep.results import group, markdown, mean_ci, t_quantile, write_results


@pytest.mark.parametrize(("df", "table"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_the_printed_table(df: int, table: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(table, abs=1e-4)


def test_mean_ci_by_hand() -> None:
    # [1, 2, 3]: mean 2, s = sqrt((1 + 0 + 1) / 2) = 1, half-width = 4.3027 * 1 / sqrt(3) = 2.4841
    mean, ci = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(2.4841, abs=1e-4)
    # [0.5, 0.7]: mean 0.6, s = sqrt(0.02) = 0.141421, half-width = 12.7062 * 0.141421 / sqrt(2) = 1.27062
    mean, ci = mean_ci([0.5, 0.7])
    assert mean == pytest.approx(0.6) and ci == pytest.approx(1.27062, abs=1e-4)
    assert mean_ci([4.0]) == (4.0, None)


def test_pareto_front() -> None:
    # (cost, loss): (1, 5) cheapest; (2, 3) better for more; (3, 4) dominated by (2, 3); (4, 1) best
    points = [(3.0, 4.0), (1.0, 5.0), (4.0, 1.0), (2.0, 3.0), (2.0, 3.5)]
    assert pareto(points, "min") == [1, 3, 2]
    # maximising accuracy: (1, 0.5), (2, 0.9) front; (3, 0.8) dominated by (2, 0.9)
    assert pareto([(1.0, 0.5), (3.0, 0.8), (2.0, 0.9)], "max") == [0, 2]


def fake_study(tmp_path: Path) -> Path:
    """Two methods x two seeds; lora seed 1 never finished."""
    losses = {("full", "0"): 2.0, ("full", "1"): 3.0, ("lora", "0"): 2.5}
    rows = []
    for index, (method, seed) in enumerate([("full", "0"), ("full", "1"), ("lora", "0"), ("lora", "1")]):
        cid = f"{method}-{seed}-0000000{index}"
        rows.append({"index": index, "id": cid, "axes": {"method": method, "seed": seed}, "run_dir": "", "argv": []})
        run = tmp_path / RUNS / cid
        run.mkdir(parents=True)
        if (method, seed) in losses:
            summary = {"trainable_params": 100 if method == "full" else 10, "peak_memory_mb": 50.0 + index}
            summary |= {"wall_seconds": 10.0, "metrics": {"val/loss": losses[method, seed]}}
            (run / "summary.json").write_text(json.dumps(summary))
            (run / "DONE").write_text("")
    (tmp_path / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"name": "toy", "metric": "val/loss", "mode": "min", "seed_axis": "seed", "axes": ["method", "seed"]}
    (tmp_path / STUDY).write_text(json.dumps({**meta, "skipped": []}))
    return tmp_path


def test_results_group_over_seeds_and_write_every_file(tmp_path: Path) -> None:
    out = write_results(fake_study(tmp_path))
    assert {p.name for p in out.iterdir()} == {
        "cells.csv",
        "table.csv",
        "table.md",
        "val_loss_vs_trainable_params.png",
        "val_loss_vs_peak_memory_mb.png",
        "val_loss_vs_wall_seconds.png",
    }
    cells = (out / "cells.csv").read_text().splitlines()
    assert len(cells) == 5 and cells[0].startswith("method,seed,id,status") and ",failed" in cells[4]
    table = (out / "table.md").read_text()
    # full: mean 2.5 over [2, 3], s = 0.7071, half-width 12.7062 * 0.7071 / sqrt(2) = 6.353
    assert "| full | 2 | 2.5 ± 6.4 | 100 | 50.5 ± 6.4 | 10 ± 0 |" in table  # memory and wall time with spread
    assert "| lora | 1 | 2.5 | 10 | 52 | 10 |" in table
    assert "1 of 4 cells have no result yet: lora-1-00000003" in table


def test_table_puts_the_best_first() -> None:
    meta = {"metric": "acc", "mode": "max", "seed_axis": "seed", "axes": ["m", "seed"]}
    rows = [{"m": "a", "n": 1, "acc": 0.5}, {"m": "b", "n": 1, "acc": 0.9}]
    assert markdown(meta, rows).splitlines()[2].startswith("| b |")
    done = [{"m": "x", "seed": "0", "status": "done", "acc": 1.0}, {"m": "x", "seed": "1", "status": "done", "acc": 3}]
    assert group(meta, done) == [{"m": "x", "n": 2, "acc": 2.0, "acc_ci": pytest.approx(12.7062, abs=1e-3)}]


def test_report_metrics_are_columns_of_the_table() -> None:
    meta = {
        "metric": "val/a",
        "report": ["gen/bleu", "val/b"],
        "mode": "min",
        "seed_axis": "seed",
        "axes": ["m", "seed"],
    }
    done = [
        {"m": "x", "seed": "0", "status": "done", "val/a": 1.0, "gen/bleu": 0.25, "val/b": 4.0},
        {"m": "x", "seed": "1", "status": "done", "val/a": 2.0, "gen/bleu": 0.75, "val/b": 4.0},
        {"m": "y", "seed": "0", "status": "done", "val/a": 0.5},  # no generation metrics in this cell
    ]
    lines = markdown(meta, group(meta, done)).splitlines()
    assert (
        lines[0]
        == "| m | n | val/a (mean ± 95% CI) | gen/bleu | val/b | trainable params | peak memory (MB) | wall (s) |"
    )
    # x: val/a 1.5 ± 12.7062·0.7071/√2 = 6.4; gen/bleu 0.5 ± 12.7062·0.3536/√2 = 3.2; val/b 4 ± 0
    assert lines[3] == "| x | 2 | 1.5 ± 6.4 | 0.5 ± 3.2 | 4 ± 0 | – | – | – |"
    assert lines[2] == "| y | 1 | 0.5 | – | – | – | – | – |"


def test_a_failed_rewrite_leaves_the_previous_files_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    out = write_results(fake_study(tmp_path))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def killed(self: Figure, fname: str, **kwargs: object) -> None:
        Path(fname).write_bytes(b"half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", killed)
    with pytest.raises(KeyboardInterrupt):
        write_results(tmp_path)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no partial file, no temporary left


def test_plot_labels_of_close_points_do_not_overlap() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ftlab.sweep.plots import place_labels

    # lora and qlora at the same cost and nearly the same loss; three adapters side by side
    points = [(1000.0, 2.50), (1000.0, 2.501), (5000.0, 2.3), (5100.0, 2.3), (5200.0, 2.31), (9e4, 2.0)]
    labels = ["lora", "qlora", "adapter_parallel", "adapter_hybrid", "adapter_sequential", "full"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(*zip(*points, strict=True), "o")
    ax.set_xscale("log")
    boxes = place_labels(ax, labels, points)
    plt.close(fig)
    assert len(boxes) == 6
    assert not [(i, j) for i in range(6) for j in range(i + 1, 6) if boxes[i].overlaps(boxes[j])]


def test_a_loaded_host_is_noted_under_the_table(tmp_path: Path) -> None:
    from ftlab.sweep.local import LOAD
    from ftlab.sweep.results import load_note

    assert load_note(tmp_path) == ""
    (tmp_path / "logs").mkdir()
    rows = [{"id": "a", "load1": 1.5, "cpus": 2, "parallel": 2}, {"id": "b", "load1": 7.25, "cpus": 2, "parallel": 2}]
    (tmp_path / LOAD).write_text("".join(json.dumps(r) + "\n" for r in rows))
    note = load_note(tmp_path)
    assert "1-minute load average up to 7.2 on 2 CPUs (2 runs of this study at once)" in note
    (tmp_path / LOAD).write_text(json.dumps(rows[0]) + "\n")
    assert load_note(tmp_path) == ""
