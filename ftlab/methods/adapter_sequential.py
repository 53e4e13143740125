"""Sequential bottleneck adapters (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP").

Two adapters per block, after the attention output projection and after the FFN output
projection, each y -> y + s·up(act(down(y))) before the residual add. Houlsby also trained the
layer norms (`train_norms: true`) and the task head (`also_train`). Differences from the paper
(zero-initialised up-projection, adapter before the sublayer's dropout): see
`ftlab.methods.bottleneck`.
"""

from __future__ import annotations

from ftlab.methods.bottleneck import BottleneckMethod, Layout, SequentialWrap, Spot


class AdapterSequential(BottleneckMethod):
    """Houlsby adapters after the attention and FFN output projections of every block; the backbone is frozen.

    Args:
        size: Bottleneck size r (overrides reduction_factor).
        reduction_factor: r = hidden size // reduction_factor, when size is not set.
        activation: Nonlinearity between the projections, a name in transformers' ACT2FN (relu, gelu, silu, ...).
        layer_norm: A LayerNorm in front of each adapter's down-projection.
        scale: Multiplies the adapters' output.
        train_norms: Also train the backbone's LayerNorm/RMSNorm weights (as Houlsby did).
        also_train: Regular expressions; parameters whose name matches any of them train too (e.g. a head).
    """

    def __init__(
        self,
        size: int | None = None,
        reduction_factor: int = 16,
        activation: str = "relu",
        layer_norm: bool = False,
        scale: float = 1.0,
        train_norms: bool = False,
        also_train: list[str] | None = None,
    ) -> None:
        super().__init__(size, reduction_factor, activation, layer_norm, train_norms, also_train)
        self.scale = scale

    def spots(self, layout: Layout) -> list[Spot]:
        return [(layout.attn_out, SequentialWrap, self.scale), (layout.ffn_out, SequentialWrap, self.scale)]
