"""Callbacks: behaviour over time (run report, schedules, probes)."""

from ftlab.callbacks.run_report import RunReport

__all__ = ["RunReport"]
