"""Regularizers: terms added to any objective's loss (EWC, L2-SP)."""

from ftlab.regularizers.base import Regularizer

__all__ = ["Regularizer"]
