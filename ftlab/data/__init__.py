"""Datamodules: one per batch kind."""

from ftlab.data.base import FineTuneDataModule
from ftlab.data.classification import ClassificationDataModule
from ftlab.data.hh_rlhf import HHRLHFDataModule
from ftlab.data.preference import PreferenceDataModule
from ftlab.data.sft import SFTDataModule

__all__ = [
    "ClassificationDataModule",
    "FineTuneDataModule",
    "HHRLHFDataModule",
    "PreferenceDataModule",
    "SFTDataModule",
]
