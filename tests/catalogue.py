"""The test catalogue: every method and objective by name, as a tiny factory, with the data it needs.

The method contract (tests/integration/test_method_contract.py), the distributed cells
(tests/integration/distributed_cells.py, test_distributed.py) and the experiment tests read these
tables, so a new method or objective is one row here (and its YAML under experiments/).
Factories take keyword arguments that override the tiny configuration (e.g. LoRA's dropout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ftlab import methods, objectives
from ftlab.rewards import FunctionReward


def _with(cls: Callable[..., Any], **tiny: Any) -> Callable[..., Any]:
    return lambda **options: cls(**{**tiny, **options})


METHODS: dict[str, Callable[..., methods.Method]] = {
    "full": _with(methods.Full),
    "freeze": _with(methods.Freeze, last_blocks=1),
    "gradual_unfreeze": _with(methods.GradualUnfreeze, every_n_steps=1),
    "lora": _with(methods.LoRA, r=4),
    "qlora": _with(methods.QLoRA, r=4),
    "ia3": _with(methods.IA3),
    "vera": _with(methods.VeRA, r=16),
    "adapter_sequential": _with(methods.AdapterSequential, size=8),
    "adapter_parallel": _with(methods.AdapterParallel, size=8),
    "adapter_hybrid": _with(methods.AdapterHybrid, size=8),
    "prefix": _with(methods.PrefixTuning, num_virtual_tokens=4),
    "prompt": _with(methods.PromptTuning, num_virtual_tokens=4, init="vocab"),
    "feature_extraction": _with(methods.FeatureExtraction),
    "reft": _with(methods.LoReFT, r=2, layers=[0], first=4),
}
"""Method name -> its tiny configuration on the test Llama (hidden 64)."""


def even_share(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **_: Any) -> list[float]:
    """A reward that varies between samples of an untrained model: the share of even token ids."""
    return [sum(i % 2 == 0 for i in ids) / max(len(ids), 1) for ids in completion_ids]


OBJECTIVES: dict[str, Callable[..., objectives.Objective]] = {
    "sft": _with(objectives.SFT),
    "dpo": _with(objectives.DPO, beta=0.1),
    "reward": _with(objectives.Reward),
    "classification": _with(objectives.Classification, num_labels=2, dropout=0.0),
    "grpo": lambda **o: objectives.GRPO(
        **{"rewards": [FunctionReward(even_share)], "num_generations": 2, "max_new_tokens": 4, **o}
    ),
    "ppo": lambda **o: objectives.PPO(
        **{"rewards": [FunctionReward(even_share)], "max_new_tokens": 4, "epochs": 2, "minibatch_size": 2, **o}
    ),
}
"""Objective name -> its tiny configuration."""

YAML_COMPANIONS: dict[str, list[str]] = {
    "objectives/classification.yaml": ["data/sst2.yaml"],
    "objectives/dpo.yaml": ["data/preference_example.yaml"],
    "objectives/reward.yaml": ["data/preference_example.yaml"],
    "data/preference_example.yaml": ["objectives/dpo.yaml"],
    "data/hh_rlhf.yaml": ["objectives/reward.yaml"],
    "data/gsm8k.yaml": ["objectives/grpo.yaml"],
    "data/synthetic_prompts.yaml": ["objectives/grpo.yaml"],
    "objectives/grpo.yaml": ["data/synthetic_prompts.yaml"],
    "objectives/ppo.yaml": ["data/synthetic_prompts.yaml"],
    "base/speed_gpu.yaml": ["methods/lora.yaml"],  # frozen_dtype needs frozen weights: not the quickstart's Full
    "objectives/ipo.yaml": ["data/preference_example.yaml"],
    "objectives/kto.yaml": ["data/feedback_example.yaml"],
    "data/feedback_example.yaml": ["objectives/kto.yaml"],
    "objectives/simpo.yaml": ["data/preference_example.yaml"],
    "objectives/orpo.yaml": ["data/preference_example.yaml"],
    **{
        f"objectives/{name}.yaml": ["data/synthetic_prompts.yaml", "objectives/grpo.yaml"]
        for name in ("dr_grpo", "dapo", "gspo", "rloo")
    },
}
"""An experiments/ YAML -> the YAMLs it is composed with in tests: an objective needs its kind of data, and
preference data an objective that reads it."""
