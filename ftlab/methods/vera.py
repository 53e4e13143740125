"""VeRA (Kopiczko et al., 2024, "Vector-based Random Matrix Adaptation") through peft: one pair of frozen
random low-rank matrices shared by every adapted layer, and per layer two trained scaling vectors.

The update of a layer is Λ_b·B·Λ_d·A with A [r, in] and B [out, r] drawn once from `projection_seed`
(and shared), Λ_d = diag(d) starting at `d_initial` and Λ_b = diag(b) at zero, so the adapted model
starts as the backbone. Only b and d train: (r + out) numbers per layer. The update is a weight delta,
so it merges for export and for decoding as LoRA's does.
"""

from __future__ import annotations

from typing import ClassVar

from peft import VeraConfig
from torch import nn

from ftlab.errors import FTLabError
from ftlab.methods.peft_method import PeftMethod, task_type


class VeRA(PeftMethod):
    """Shared random low-rank projections with trained per-layer scaling vectors (peft).

    Args:
        r: Rank of the shared random projections (VeRA uses far larger ranks than LoRA: they cost no training).
        target_modules: Linear layer names to adapt, or unset for peft's defaults of the architecture.
        dropout: Dropout on the input of the update.
        d_initial: Initial value of the d vectors.
        projection_seed: Seed of the shared random projections (a checkpoint holds b and d only; the
            projections are drawn again from this seed).
        modules_to_save: Modules trained in full beside the vectors (e.g. a classifier head).
    """

    supports_fsdp: ClassVar[bool] = False  # the projections are shared by every layer: not sharded here
    merges_for_decoding: ClassVar[bool] = True

    def __init__(
        self,
        r: int = 256,
        target_modules: list[str] | None = None,
        dropout: float = 0.0,
        d_initial: float = 0.1,
        projection_seed: int = 0,
        modules_to_save: list[str] | None = None,
    ) -> None:
        if r < 1:
            raise FTLabError(f"VeRA r must be at least 1, got {r}")
        self.r = r
        self.target_modules = target_modules
        self.dropout = dropout
        self.d_initial = d_initial
        self.projection_seed = projection_seed
        self.modules_to_save = modules_to_save

    def config(self, model: nn.Module) -> VeraConfig:
        return VeraConfig(
            r=self.r,
            target_modules=self.target_modules,
            vera_dropout=self.dropout,
            d_initial=self.d_initial,
            projection_prng_key=self.projection_seed,
            save_projection=True,  # an exported adapter folder carries them
            modules_to_save=self.modules_to_save,
            task_type=task_type(model),
        )
