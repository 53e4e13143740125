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

    Options: `BottleneckMethod`'s; `scale` defaults to 1.
    """

    def spots(self, layout: Layout) -> list[Spot]:
        return [(layout.attn_out, SequentialWrap, self.scale), (layout.ffn_out, SequentialWrap, self.scale)]
