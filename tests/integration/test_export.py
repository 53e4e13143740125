"""`python -m ftlab export`: a LoRA run as a peft adapter folder and as a merged plain model."""

from __future__ import annotations

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
