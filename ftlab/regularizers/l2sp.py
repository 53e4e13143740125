"""L2-SP: a plain quadratic pull towards the starting weights (EWC with F ≡ 1).

    penalty = λ/2 · Σ_i (θ_i − θ*_i)²

Li, Grandvalet and Davoine (2018), "Explicit Inductive Bias for Transfer Learning with Convolutional
Networks", eq. 3 (α/2 · ‖w_S − w_S⁰‖²). It differs from the paper in two ways: it covers the method's
trainable parameters only (a LoRA run pulls its adapters to their initial values), and the paper's
second term (β/2 · ‖w_new‖² on a new head) is left to the optimizer's weight decay. It needs no old
data and no Fisher: the baseline EWC must beat.
"""

from __future__ import annotations

from typing import ClassVar

from ftlab.regularizers.ewc import EWC


class L2SP(EWC):
    """L2-SP: λ/2 · ‖θ − θ*‖² over the trainable parameters, θ* their values at the start of the run.

    Args:
        strength: λ.
    """

    uses_fisher: ClassVar[bool] = False

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__(data=None, strength=strength)  # type: ignore[arg-type]  # no old data: F ≡ 1
