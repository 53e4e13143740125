"""`python -m ftlab export`: a LoRA run as a peft adapter folder and as a merged plain model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from ftlab.cli import main
from ftlab.export import load_run
from tests.conftest import REPO


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_lora_run_exports_adapter_and_merged_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    main(
        [
            "fit",
            "--config",
            "experiments/quickstart.yaml",
            "--config",
            "experiments/methods/lora.yaml",
            "--trainer.max_steps=3",
            "--data.init_args.max_length=96",
            f"--trainer.default_root_dir={run}",
        ]
    )
    main(["export", str(run), "--out", str(tmp_path / "out")])

    trained = load_run(run).model
    ids = torch.randint(3, 2000, (2, 12))
    expected = logits(trained, ids)
    base = AutoModelForCausalLM.from_pretrained(trained.peft_config["default"].base_model_name_or_path)
    adapter = PeftModel.from_pretrained(base, str(tmp_path / "out" / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "merged")).eval()
    torch.testing.assert_close(logits(adapter, ids), expected, rtol=0, atol=0)
    torch.testing.assert_close(logits(merged, ids), expected, rtol=1e-4, atol=1e-5)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (tmp_path / "out" / "merged" / "tokenizer.json").exists()

    # the folder works elsewhere: no file names this machine's cache, and plain peft loads it from another
    # working directory with another HOME and an empty ftlab cache
    out = tmp_path / "out"
    cache = str(trained.peft_config["default"].base_model_name_or_path)
    assert all(cache not in p.read_text() for p in out.rglob("*.json")), "an export file names the local cache"
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
    moved = tmp_path / "elsewhere" / "export"
    shutil.move(str(out), moved)
    torch.save(ids, tmp_path / "ids.pt")
    torch.save(expected, tmp_path / "expected.pt")
    script = (
        "import sys, torch; from peft import PeftModel; from transformers import AutoModelForCausalLM; "
        "base = AutoModelForCausalLM.from_pretrained('export/base'); "
        "model = PeftModel.from_pretrained(base, 'export/adapter').eval(); "
        f"ids = torch.load({str(tmp_path / 'ids.pt')!r}, weights_only=True); "
        f"expected = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True); "
        "torch.testing.assert_close(model(input_ids=ids, use_cache=False).logits, expected, rtol=0, atol=0); "
        "print('ok')"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FTLAB_CACHE")}
    env |= {"HOME": str(home), "FTLAB_CACHE": str(home / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=moved.parent, env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_export_refuses_what_cannot_become_a_plain_model(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "nothing")])
    assert "nothing/config.yaml not found: export needs a finished run folder" in capsys.readouterr().err
    run = tmp_path / "run"
    main(
        [
            "fit",
            "--config",
            "experiments/quickstart.yaml",
            "--config",
            "experiments/methods/adapter_parallel.yaml",
            "--trainer.max_steps=1",
            "--data.init_args.max_length=96",
            f"--trainer.default_root_dir={run}",
        ]
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run)])
    assert exit_info.value.code == 2
    assert "AdapterParallel cannot be merged into plain backbone weights" in capsys.readouterr().err
