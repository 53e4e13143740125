"""QLoRA (Dettmers et al., 2023): LoRA adapters on a backbone stored in 4-bit NormalFloat.

bitsandbytes quantizes the frozen linear weights to NF4 (optionally double-quantizing the scales)
at load time; peft's `prepare_model_for_kbit_training` readies the model (norms in float32, inputs
requiring grad for checkpointing) and LoRA trains in `compute_dtype`. It runs on CPU with
bitsandbytes >= 0.50 and on CUDA. The paper's paged optimizers are left to the optimizer config.

On CPU, bitsandbytes 0.50 repacks 4-bit weights in place for a faster inference kernel the first
time a layer runs in eval mode, and unpacks them when the state dict is read; that round trip is
lossy (the quantized absmax scales change), so the frozen base would drift a little at every
validation. ftlab switches that kernel off for the layers it trains on (`support_avx512bf16_for_cpu`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from peft import prepare_model_for_kbit_training
from torch import nn

from ftlab.errors import FTLabError
from ftlab.methods.lora import LoRA


class QLoRA(LoRA):
    """LoRA on a 4-bit quantized backbone (bitsandbytes NF4); the LoRA options are LoRA's.

    Args:
        quant_type: 4-bit data type: nf4 (NormalFloat, the paper's) or fp4.
        double_quant: Quantize the quantization constants too (saves ~0.4 bit per weight).
        compute_dtype: dtype of the matmuls with dequantized weights (float32 on CPU; bfloat16 on GPUs).
        gradient_checkpointing: Recompute activations in backward to save memory.
        lora: LoRA's options (r, alpha, dropout, target_modules, rslora, dora, modules_to_save).
    """

    supports_quantized: ClassVar[bool] = True
    supports_fsdp: ClassVar[bool] = False
    mergeable: ClassVar[bool] = False  # the rounding to 4 bits would not come back
    merges_for_decoding: ClassVar[bool] = False

    def __init__(
        self,
        quant_type: str = "nf4",
        double_quant: bool = True,
        compute_dtype: str = "float32",
        gradient_checkpointing: bool = False,
        **lora: Any,
    ) -> None:
        super().__init__(**lora)
        if self.rewrites_base:
            raise FTLabError(f"QLoRA init {self.init} rewrites the base weights, 4-bit here; use init kaiming")
        if quant_type not in ("nf4", "fp4"):
            raise FTLabError(f"QLoRA quant_type must be nf4 or fp4, got {quant_type!r}")
        if not isinstance(getattr(torch, compute_dtype, None), torch.dtype):
            raise FTLabError(f"QLoRA compute_dtype {compute_dtype!r} is not a torch dtype")
        self.quant_type = quant_type
        self.double_quant = double_quant
        self.compute_dtype = compute_dtype
        self.gradient_checkpointing = gradient_checkpointing

    def load_kwargs(self) -> dict[str, Any]:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise FTLabError(f"QLoRA needs bitsandbytes, which cannot be imported here: {err}") from err
        from transformers import BitsAndBytesConfig

        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
        )
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        return {"quantization_config": config, "device_map": {"": device}}

    def prepare(self, model: nn.Module) -> nn.Module:
        if not getattr(model, "is_loaded_in_4bit", False):
            raise FTLabError("QLoRA needs a backbone loaded in 4 bit; load it through the run's backbone")
        import bitsandbytes as bnb

        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False  # keep the stored layout: see the module docstring
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=self.gradient_checkpointing)
        return super().prepare(model)

    def merge(self, model: nn.Module) -> nn.Module:
        raise FTLabError("QLoRA adapters are not merged into a 4-bit base; export the adapter folder instead")
