"""A bfloat16 frozen base under float32 trained weights, and per-block activation checkpointing (every method of
the catalogue: the same losses, or a refusal in one sentence)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from ftlab.data import SFTDataModule
from ftlab.errors import FTLabError
from ftlab.methods import Full, GradualUnfreeze, LoRA, PrefixTuning
from ftlab.models.compile import _hf_model, check_speed
from ftlab.models.precision import check_frozen_dtype
from ftlab.module import FineTuneModule
from ftlab.objectives import SFT
from tests.conftest import quiet_trainer
from tests.integration.test_method_contract import METHODS


class Losses(pl.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


def fit(backbone, data, root, method, precision="32-true", **switches) -> tuple[FineTuneModule, list[float]]:
    pl.seed_everything(0)
    module = FineTuneModule(backbone, method, SFT(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), **switches)
    losses = Losses()
    trainer = quiet_trainer(root, 3, limit_val_batches=0, precision=precision, callbacks=[losses])
    trainer.fit(module, SFTDataModule(train=str(data), val_fraction=0.25, batch_size=4, max_length=64))
    return module, losses.values


def test_lora_on_a_bf16_frozen_base_trains_fp32_adapters(tiny_llama, sft_file, tmp_path) -> None:
    module, losses = fit(tiny_llama, sft_file, tmp_path, LoRA(r=2), "bf16-mixed", frozen_dtype="bfloat16")
    trainable = set(module.method.trainable_parameters(module.model))
    dtypes = {name: p.dtype for name, p in module.model.named_parameters()}
    assert trainable and all(dtypes[n] == torch.float32 for n in trainable)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if n not in trainable)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_frozen_dtype_refusals() -> None:
    with pytest.raises(FTLabError, match="needs mixed precision"):
        check_frozen_dtype("bfloat16", LoRA(), "32-true")
    with pytest.raises(FTLabError, match="every weight trains"):
        check_frozen_dtype("bfloat16", Full(), "bf16-mixed")
    with pytest.raises(FTLabError, match="unfreezes weights"):
        check_frozen_dtype("bfloat16", GradualUnfreeze(), "bf16-mixed")
    with pytest.raises(FTLabError, match="not a floating torch dtype"):
        check_frozen_dtype("int8", LoRA(), "bf16-mixed")
    check_frozen_dtype("bfloat16", LoRA(), "bf16-mixed")


def test_activation_checkpointing_gives_the_same_losses(tiny_llama, sft_file, tmp_path) -> None:
    _, plain = fit(tiny_llama, sft_file, tmp_path / "plain", LoRA(r=2))
    module, checkpointed = fit(tiny_llama, sft_file, tmp_path / "ckpt", LoRA(r=2), activation_checkpointing=True)
    assert module.model.get_base_model().is_gradient_checkpointing
    assert checkpointed == pytest.approx(plain, abs=1e-5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_alike_with_activation_checkpointing(name: str, tiny_llama, sft_file, tmp_path) -> None:
    method = METHODS[name]
    if not method().supports_activation_checkpointing:
        with pytest.raises(FTLabError, match=f"cannot recompute the blocks of method {method().name}"):
            check_speed(method(), False, True)
        return
    _, plain = fit(tiny_llama, sft_file, tmp_path / "plain", method())
    module, checkpointed = fit(tiny_llama, sft_file, tmp_path / "ckpt", method(), activation_checkpointing=True)
    assert _hf_model(module.model).is_gradient_checkpointing
    assert checkpointed == pytest.approx(plain, abs=1e-5)


def test_prefix_tuning_is_refused_activation_checkpointing_in_one_sentence() -> None:
    with pytest.raises(FTLabError, match="cannot recompute the blocks of method PrefixTuning: its key/value prefixes"):
        check_speed(PrefixTuning(), False, True)
    check_speed(PrefixTuning(), False, False)


def test_liger_refused_off_cuda_and_applied_on_cuda(tiny_llama) -> None:
    from ftlab.models.kernels import apply_liger, check_liger

    with pytest.raises(FTLabError, match="needs a CUDA device"):
        check_liger(True, torch.device("cpu"))
    check_liger(False, torch.device("cpu"))
    if not torch.cuda.is_available():
        pytest.skip("Liger's Triton kernels run on CUDA only; this machine has no CUDA device")
    pytest.importorskip("liger_kernel", reason="the optional extra ftlab[liger] is not installed")
    from transformers import AutoModelForCausalLM

    model = tiny_llama.load_model(AutoModelForCausalLM).cuda()
    ids = torch.randint(3, 500, (2, 16), device="cuda")
    expected = model(input_ids=ids).logits
    apply_liger(model)
    torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)
