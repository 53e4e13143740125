"""Global-token normalisation over 2 gloo ranks (DDP) equals one process holding both ranks' rows; each
rank's own token mean does not (the ranks hold 11 and 3 completion tokens)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = Path(__file__).with_name("global_tokens_script.py")


@pytest.mark.slow
def test_global_token_divisor_over_two_ranks_equals_one_process(tmp_path: Path) -> None:
    out = tmp_path / "grads.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, str(SCRIPT), str(out)], check=True, env=env, cwd=REPO, timeout=120, stdin=subprocess.DEVNULL
    )
    result = json.loads(out.read_text())
    assert result["max_abs_diff"]["global"] < 1e-7
    # a mean of the ranks' own token means weighs rank 1's 3 tokens as much as rank 0's 11
    assert result["max_abs_diff"]["rank"] > 1e-3 * result["max_abs_grad"]
