"""Sequential and parallel bottleneck adapters together (Houlsby et al., 2019; He et al., 2022).

Three adapters per block: Houlsby's after the attention and the FFN output projections, and He et
al.'s parallel one beside the FFN (reading the FFN input). Neither paper trains this exact mix: it
is here for ablations. Differences from the papers: see `ftlab.methods.bottleneck`.
"""

from __future__ import annotations

from ftlab.methods.bottleneck import BottleneckMethod, Layout, SequentialWrap, Spot


class AdapterHybrid(BottleneckMethod):
    """Sequential adapters after the attention and FFN outputs plus a parallel adapter beside the FFN.

    Args:
        size: Bottleneck size r of every adapter (overrides reduction_factor).
        reduction_factor: r = hidden size // reduction_factor, when size is not set.
        activation: Nonlinearity between the projections, a name in transformers' ACT2FN (relu, gelu, silu, ...).
        layer_norm: A LayerNorm in front of each adapter's down-projection.
        scale: Multiplies the parallel adapters' output (He et al. used 4).
        sequential_scale: Multiplies the sequential adapters' output.
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
        sequential_scale: float = 1.0,
        train_norms: bool = False,
        also_train: list[str] | None = None,
    ) -> None:
        super().__init__(size, reduction_factor, activation, layer_norm, train_norms, also_train)
        self.scale = scale
        self.sequential_scale = sequential_scale

    def spots(self, layout: Layout) -> list[Spot]:
        return [
            (layout.attn_out, SequentialWrap, self.sequential_scale),
            (layout.ffn_out, SequentialWrap, self.sequential_scale),
            (layout.ffn, layout.parallel, self.scale),
        ]
