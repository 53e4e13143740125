"""Sequential and parallel bottleneck adapters together (Houlsby et al., 2019; He et al., 2022).

Three adapters per block: Houlsby's after the attention and the FFN output projections, and He et
al.'s parallel one beside the FFN (reading the FFN input). Neither paper trains this exact mix: it
is here for ablations. Differences from the papers: see `ftlab.methods.bottleneck`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ftlab.methods.bottleneck import BottleneckMethod, Layout, SequentialWrap, Spot


class AdapterHybrid(BottleneckMethod):
    """Sequential adapters after the attention and FFN outputs plus a parallel adapter beside the FFN.

    Args:
        sequential_scale: Multiplies the sequential adapters' output.
        adapter: `BottleneckMethod`'s options; `scale` multiplies the parallel adapters' output (default 4,
            as He et al. used).
    """

    default_scale: ClassVar[float] = 4.0

    def __init__(self, sequential_scale: float = 1.0, **adapter: Any) -> None:
        super().__init__(**adapter)
        self.sequential_scale = sequential_scale

    def spots(self, layout: Layout) -> list[Spot]:
        return [
            (layout.attn_out, SequentialWrap, self.sequential_scale),
            (layout.ffn_out, SequentialWrap, self.sequential_scale),
            (layout.ffn, layout.parallel, self.scale),
        ]
