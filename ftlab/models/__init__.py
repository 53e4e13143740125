"""Loading backbones and tokenizers; finding a model's parts."""

from ftlab.models.anatomy import Anatomy, anatomy, find_blocks
from ftlab.models.backbone import Backbone, Pretrained, TinyBackbone
from ftlab.models.from_run import FromRun

__all__ = ["Anatomy", "Backbone", "FromRun", "Pretrained", "TinyBackbone", "anatomy", "find_blocks"]
