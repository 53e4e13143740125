"""summary.json memory: the device peak read before teardown, the host peak beside it, and tables using the first."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch

from ftlab.callbacks import run_report
from ftlab.data import SFTDataModule
from ftlab.methods import LoRA
from ftlab.module import FineTuneModule
from ftlab.objectives import SFT
from ftlab.sweep.results import collect
from tests.conftest import quiet_trainer


def test_device_peaks_come_from_the_cuda_allocator(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 4 * 2**30)
    assert run_report.peak_device_memory_mb(torch.device("cuda", 0)) == {"allocated": 3072.0, "reserved": 4096.0}
    assert run_report.peak_device_memory_mb(torch.device("cpu")) is None


def test_memory_report_names_device_and_host() -> None:
    on_gpu = run_report.memory_report({"allocated": 3072.0, "reserved": 4096.0}, 900.0)
    assert on_gpu == {
        "peak_memory_mb": 3072.0,
        "peak_memory_kind": "device_allocated",
        "peak_device_memory_mb": 3072.0,
        "peak_device_reserved_mb": 4096.0,
        "peak_host_memory_mb": 900.0,
    }
    on_cpu = run_report.memory_report(None, 900.0)
    assert on_cpu["peak_memory_mb"] == 900.0 and on_cpu["peak_memory_kind"] == "host_rss"
    assert on_cpu["peak_device_memory_mb"] is None and on_cpu["peak_device_reserved_mb"] is None


def test_device_peak_is_read_before_teardown(tiny_llama, sft_file, tmp_path, monkeypatch) -> None:
    """A real fit: the peak is read while the module is still set up on its device (before the strategy's
    teardown moves it to the CPU), and summary.json carries the values read then."""
    events: list[str] = []

    def fake_peak(device: torch.device) -> dict[str, float]:
        events.append("peak")
        return {"allocated": 123.0, "reserved": 456.0}

    monkeypatch.setattr(run_report, "peak_device_memory_mb", fake_peak)
    pl.seed_everything(0)
    module = FineTuneModule(backbone=tiny_llama, method=LoRA(r=2), objective=SFT())
    trainer = quiet_trainer(tmp_path, steps=2)
    teardown = trainer.strategy.teardown
    monkeypatch.setattr(trainer.strategy, "teardown", lambda: (events.append("teardown"), teardown())[1])
    trainer.fit(module, SFTDataModule(train=str(sft_file), val_fraction=0.25, batch_size=4, max_length=64))
    assert events.index("peak") < events.index("teardown")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["peak_device_memory_mb"] == 123.0 and summary["peak_device_reserved_mb"] == 456.0
    assert summary["peak_memory_mb"] == 123.0 and summary["peak_memory_kind"] == "device_allocated"
    assert summary["peak_host_memory_mb"] > 0


def test_results_table_prefers_the_device_peak(tmp_path: Path) -> None:
    from ftlab.sweep.manifest import MANIFEST, RUNS, STUDY

    rows = []
    for index, device_peak in enumerate([2048.0, None]):
        cid = f"cell-{index}"
        rows.append({"index": index, "id": cid, "axes": {"seed": str(index)}, "run_dir": "", "argv": []})
        run = tmp_path / RUNS / cid
        run.mkdir(parents=True)
        summary = {"peak_memory_mb": 700.0, "peak_host_memory_mb": 700.0, "peak_device_memory_mb": device_peak}
        (run / "summary.json").write_text(json.dumps(summary | {"metrics": {"val/loss": 1.0}}))
        (run / "DONE").write_text("")
    (tmp_path / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"name": "toy", "metric": "val/loss", "mode": "min", "seed_axis": "seed", "axes": ["seed"]}
    (tmp_path / STUDY).write_text(json.dumps({**meta, "skipped": []}))
    _, cells = collect(tmp_path)
    assert [c["peak_memory_mb"] for c in cells] == [2048.0, 700.0]
