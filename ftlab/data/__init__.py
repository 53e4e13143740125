"""Datamodules: one per batch kind."""

from ftlab.data.base import FineTuneDataModule
from ftlab.data.sft import SFTDataModule

__all__ = ["FineTuneDataModule", "SFTDataModule"]
