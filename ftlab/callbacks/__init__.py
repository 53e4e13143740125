"""Callbacks: behaviour over time that no single component owns (run report, probes). A component's own
callbacks live beside it: the Fisher estimate with EWC (ftlab.regularizers.fisher_estimate), the reference
cache with DPO (ftlab.objectives.reference_cache), the unfreeze schedule with gradual unfreezing
(ftlab.methods.unfreeze_schedule)."""

from ftlab.callbacks.checkpoint import ModelCheckpoint
from ftlab.callbacks.forgetting import ForgettingProbe
from ftlab.callbacks.run_report import RunReport

__all__ = ["ForgettingProbe", "ModelCheckpoint", "RunReport"]
