"""Callbacks: behaviour over time (run report, schedules, probes)."""

from ftlab.callbacks.fisher import FisherEstimate
from ftlab.callbacks.forgetting import ForgettingProbe
from ftlab.callbacks.run_report import RunReport

__all__ = ["FisherEstimate", "ForgettingProbe", "RunReport"]
