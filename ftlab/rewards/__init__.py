"""Reward functions and reward sources for online RL (GRPO, PPO)."""

from ftlab.rewards.gsm8k import gsm8k_exact_match, gsm8k_format
from ftlab.rewards.sources import FunctionReward, ModelReward, RewardSource
from ftlab.rewards.token_rules import TokenShare

__all__ = ["FunctionReward", "ModelReward", "RewardSource", "TokenShare", "gsm8k_exact_match", "gsm8k_format"]
