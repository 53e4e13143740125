"""benchmarks/gpu_grpo.py runs end to end on CPU with a tiny Llama (its GPU run is the real measurement)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpu_grpo_benchmark_smoke(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_grpo", REPO / "benchmarks" / "gpu_grpo.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--tiny", "--steps", "1", "--warmup", "1", "--new_tokens", "4", "--root", str(tmp_path)])
    assert set(results) == {"generate", "static"}
    for row in results.values():
        assert 0 < row["generation_share"] < 1
        assert row["s_per_step"] > 0 and math.isfinite(row["generated_tokens_per_s"])
