"""Parallel bottleneck adapters (He et al., 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning").

One adapter per block, beside the FFN: it reads the FFN input x and adds s·up(act(down(x))) to
the FFN output, s = 4 by default as in the paper. He et al. also studied a parallel adapter at the
attention sublayer and found it more effective at the FFN; only the FFN one is here.
Differences from the paper (zero-initialised up-projection; BERT's fused FFN output and residual):
see `ftlab.methods.bottleneck`.
"""

from __future__ import annotations

from ftlab.methods.bottleneck import BottleneckMethod, Layout, Spot


class AdapterParallel(BottleneckMethod):
    """A parallel adapter beside the FFN of every block: FFN(x) + s·A(x); the backbone is frozen.

    Args:
        size: Bottleneck size r (overrides reduction_factor).
        reduction_factor: r = hidden size // reduction_factor, when size is not set.
        activation: Nonlinearity between the projections, a name in transformers' ACT2FN (relu, gelu, silu, ...).
        layer_norm: A LayerNorm in front of each adapter's down-projection.
        scale: s, multiplies the adapters' output (He et al. used 4).
        train_norms: Also train the backbone's LayerNorm/RMSNorm weights.
        also_train: Regular expressions; parameters whose name matches any of them train too (e.g. a head).
    """

    def __init__(
        self,
        size: int | None = None,
        reduction_factor: int = 16,
        activation: str = "relu",
        layer_norm: bool = False,
        scale: float = 4.0,
        train_norms: bool = False,
        also_train: list[str] | None = None,
    ) -> None:
        super().__init__(size, reduction_factor, activation, layer_norm, train_norms, also_train)
        self.scale = scale

    def spots(self, layout: Layout) -> list[Spot]:
        return [(layout.ffn, layout.parallel, self.scale)]
