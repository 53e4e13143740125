"""Datamodules: one per batch kind."""

from ftlab.data.base import FineTuneDataModule
from ftlab.data.classification import ClassificationDataModule
from ftlab.data.feedback import FeedbackDataModule
from ftlab.data.gsm8k import GSM8KDataModule
from ftlab.data.hh_rlhf import HHRLHFDataModule
from ftlab.data.mixture import MixtureDataModule
from ftlab.data.preference import PreferenceDataModule
from ftlab.data.prompts import PromptDataModule
from ftlab.data.sft import SFTDataModule
from ftlab.data.text import TextDataModule

__all__ = [
    "ClassificationDataModule",
    "FeedbackDataModule",
    "FineTuneDataModule",
    "GSM8KDataModule",
    "HHRLHFDataModule",
    "MixtureDataModule",
    "PreferenceDataModule",
    "PromptDataModule",
    "SFTDataModule",
    "TextDataModule",
]
