"""Datamodules: one per batch kind."""

from ftlab.data.base import FineTuneDataModule
from ftlab.data.classification import ClassificationDataModule
from ftlab.data.sft import SFTDataModule

__all__ = ["ClassificationDataModule", "FineTuneDataModule", "SFTDataModule"]
