"""Loading backbones and tokenizers; finding a model's parts."""

from ftlab.models.anatomy import Anatomy, anatomy, find_blocks
from ftlab.models.backbone import Backbone, Pretrained, TinyBackbone

__all__ = ["Anatomy", "Backbone", "Pretrained", "TinyBackbone", "anatomy", "find_blocks"]
