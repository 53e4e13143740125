"""benchmarks/gpu.py --tiny: the GPU benchmark's code paths on a small model on the CPU (eager only here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpu_benchmark_tiny_smoke(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks import gpu

    out = tmp_path / "GPU.md"
    gpu.main(["--tiny", "--no_compile", "--steps", "2", "--warmup", "1", "--out", str(out), "--cache", str(tmp_path)])
    table = out.read_text()
    for run in ("hand loop, full, eager", "ftlab, full, eager", "hand loop, LoRA, eager", "ftlab, LoRA, eager"):
        line = next(row for row in table.splitlines() if row.startswith(f"| {run} |"))
        step, tokens = line.split("|")[2:4]
        assert float(step) > 0 and float(tokens.replace(",", "")) > 0
