"""Loading backbones and tokenizers; finding a model's parts (no method involved: a run's output as the
next run's backbone is `ftlab.chain.FromRun`)."""

from ftlab.models.anatomy import Anatomy, anatomy, find_blocks
from ftlab.models.backbone import Backbone, Pretrained, TinyBackbone

__all__ = ["Anatomy", "Backbone", "Pretrained", "TinyBackbone", "anatomy", "find_blocks"]
