"""LoRA's peft initialisations from the base weights' structure (PiSSA, OLoRA): the model starts as the base,
the reference policy is a frozen copy (the adapter switched off is no longer the base), and export writes the
change as a plain LoRA that applies to the original base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from ftlab.cli import main
from ftlab.errors import FTLabError
from ftlab.methods import LoRA, QLoRA
from ftlab.module import FineTuneModule
from ftlab.objectives import DPO
from ftlab.saved_run import load_run
from tests.conftest import REPO


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_the_model_starts_as_the_base_and_keeps_it_as_reference(init: str, tiny_llama) -> None:
    ids = torch.randint(3, 500, (2, 10))
    base = logits(tiny_llama.load_model(AutoModelForCausalLM).eval(), ids)
    module = FineTuneModule(tiny_llama, LoRA(r=4, init=init), DPO(beta=0.1))
    module.configure_model()
    model = module.model.eval()
    torch.testing.assert_close(logits(model, ids), base, rtol=1e-4, atol=1e-4)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts from W's structure, not from zero
    with model.disable_adapter():  # the residual weights alone are not the base any more
        assert (logits(model, ids) - base).abs().max() > 1e-3
    assert not module.method.supports_disable and module.reference_model is not None
    torch.testing.assert_close(logits(module.reference_model, ids), base, rtol=0, atol=0)


def test_default_lora_still_switches_off_for_its_reference(tiny_llama) -> None:
    module = FineTuneModule(tiny_llama, LoRA(r=4), DPO(beta=0.1))
    module.configure_model()
    assert module.method.supports_disable and module.reference_model is None


def test_a_pissa_run_exports_a_lora_of_its_change_for_the_original_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    main(
        [
            "fit",
            *("--config", "experiments/quickstart.yaml", "--config", "experiments/methods/lora.yaml"),
            "--model.method.init_args.init=pissa",
            "--model.method.init_args.r=4",
            "--trainer.max_epochs=-1",
            "--trainer.max_steps=3",
            "--trainer.callbacks=[]",
            "--data.init_args.max_length=64",
            f"--trainer.default_root_dir={run}",
        ]
    )
    main(["export", str(run), "--out", str(tmp_path / "out")])
    trained, start = load_run(run), load_run(run, trained=False)
    ids = torch.randint(3, 2000, (2, 12))
    expected = logits(trained.model, ids)
    assert (expected - logits(start.model, ids)).abs().max() > 1e-4  # the run trained
    original = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "base")).eval()
    adapter = PeftModel.from_pretrained(original, str(tmp_path / "out" / "adapter")).eval()
    assert adapter.peft_config["default"].r == 8  # rank 2r: the trained factors and the initial ones
    torch.testing.assert_close(logits(adapter, ids), expected, rtol=1e-4, atol=1e-4)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "merged")).eval()
    torch.testing.assert_close(logits(merged, ids), expected, rtol=1e-4, atol=1e-4)


def test_inits_that_cannot_work_are_named() -> None:
    with pytest.raises(FTLabError, match="LoRA init must be one of"):
        LoRA(init="loftq")  # type: ignore[arg-type]
    with pytest.raises(FTLabError, match="cannot start a DoRA adapter"):
        LoRA(init="olora", dora=True)
    with pytest.raises(FTLabError, match="4-bit here"):
        QLoRA(init="pissa")
