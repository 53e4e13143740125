"""Fine-tuning methods: one class per file; the class name is the config name."""

from ftlab.methods.base import Method
from ftlab.methods.freeze import Freeze
from ftlab.methods.full import Full
from ftlab.methods.lora import LoRA

__all__ = ["Freeze", "Full", "LoRA", "Method"]
