"""Parallel bottleneck adapters (He et al., 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning").

One adapter per block, beside the FFN: it reads the FFN input x and adds s·up(act(down(x))) to
the FFN output, s = 4 by default as in the paper. He et al. also studied a parallel adapter at the
attention sublayer and found it more effective at the FFN; only the FFN one is here.
Differences from the paper (zero-initialised up-projection; BERT's fused FFN output and residual):
see `ftlab.methods.bottleneck`.
"""

from __future__ import annotations

from typing import ClassVar

from ftlab.methods.bottleneck import BottleneckMethod, Layout, Spot


class AdapterParallel(BottleneckMethod):
    """A parallel adapter beside the FFN of every block: FFN(x) + s·A(x); the backbone is frozen.

    Options: `BottleneckMethod`'s; `scale` (s) defaults to 4, as He et al. used.
    """

    default_scale: ClassVar[float] = 4.0

    def spots(self, layout: Layout) -> list[Spot]:
        return [(layout.ffn, layout.parallel, self.scale)]
