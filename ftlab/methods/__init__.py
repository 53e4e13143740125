"""Fine-tuning methods: one class per file; the class name is the config name."""

from ftlab.methods.adapter_hybrid import AdapterHybrid
from ftlab.methods.adapter_parallel import AdapterParallel
from ftlab.methods.adapter_sequential import AdapterSequential
from ftlab.methods.base import Method
from ftlab.methods.feature_extraction import FeatureExtraction
from ftlab.methods.freeze import Freeze
from ftlab.methods.full import Full
from ftlab.methods.gradual_unfreeze import GradualUnfreeze
from ftlab.methods.ia3 import IA3
from ftlab.methods.lora import LoRA
from ftlab.methods.prefix import PrefixTuning
from ftlab.methods.prompt import PromptTuning
from ftlab.methods.qlora import QLoRA
from ftlab.methods.reft import LoReFT
from ftlab.methods.vera import VeRA

__all__ = [
    "IA3",
    "AdapterHybrid",
    "AdapterParallel",
    "AdapterSequential",
    "FeatureExtraction",
    "Freeze",
    "Full",
    "GradualUnfreeze",
    "LoRA",
    "LoReFT",
    "Method",
    "PrefixTuning",
    "PromptTuning",
    "QLoRA",
    "VeRA",
]
