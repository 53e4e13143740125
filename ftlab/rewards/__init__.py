"""Reward functions and reward sources for online RL (GRPO, PPO); a trained reward model is
`ftlab.reward_model.ModelReward`."""

from ftlab.rewards.gsm8k import gsm8k_exact_match, gsm8k_format
from ftlab.rewards.sources import FunctionReward, RewardSource
from ftlab.rewards.token_rules import TokenShare

__all__ = ["FunctionReward", "RewardSource", "TokenShare", "gsm8k_exact_match", "gsm8k_format"]
