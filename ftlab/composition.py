"""Whether a run's parts can work together, decided before the model loads."""

from __future__ import annotations

from typing import Any

from ftlab import distributed
from ftlab.errors import FTLabError
from ftlab.hints import data_hint
from ftlab.methods.base import Method
from ftlab.objectives.base import Objective


def check_composition(method: Method, objective: Objective, datamodule: Any, strategy: Any) -> None:
    """Refuse, in one sentence, a run whose parts cannot work together (before the model loads)."""
    produced = getattr(datamodule, "batch_type", None)
    if datamodule is not None and not objective.consumes(produced):
        kinds = " or ".join(kind.__name__ for kind in (objective.batch_type, *objective.also_consumes))
        raise FTLabError(
            f"objective {objective.name} consumes {kinds} batches but datamodule "
            f"{type(datamodule).__name__} yields {getattr(produced, '__name__', 'unknown')} batches"
            + data_hint(objective.batch_type)
        )
    if datamodule is not None:
        objective.check_data(datamodule)
    if not method.trains_backbone and not objective.has_head:
        raise FTLabError(
            f"method {method.name} trains only an objective's head, and objective {objective.name} has none"
        )
    if getattr(datamodule, "packing", False) and not method.supports_packing:
        raise FTLabError(f"method {method.name} cannot train on packed rows; set data packing: false")
    if getattr(objective, "sampler", None) == "static" and method.virtual_tokens:
        raise FTLabError(
            f"objective {objective.name} sampler static cannot decode with method {method.name}'s virtual tokens; "
            "use sampler: generate"
        )
    distributed.check_strategy(method, strategy)
