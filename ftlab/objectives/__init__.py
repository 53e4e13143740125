"""Objectives: one class per file; the loss math as pure functions beside it."""

from ftlab.objectives.base import Objective, StepContext
from ftlab.objectives.classification import Classification
from ftlab.objectives.dpo import DPO
from ftlab.objectives.grpo import GRPO
from ftlab.objectives.kto import KTO
from ftlab.objectives.orpo import ORPO
from ftlab.objectives.ppo import PPO
from ftlab.objectives.reward import Reward
from ftlab.objectives.sft import SFT
from ftlab.objectives.simpo import SimPO

__all__ = ["DPO", "GRPO", "KTO", "ORPO", "PPO", "SFT", "Classification", "Objective", "Reward", "SimPO", "StepContext"]
