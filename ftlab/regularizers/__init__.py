"""Regularizers: terms added to any objective's loss (EWC, L2-SP)."""

from ftlab.regularizers.base import Regularizer
from ftlab.regularizers.ewc import EWC
from ftlab.regularizers.l2sp import L2SP

__all__ = ["EWC", "L2SP", "Regularizer"]
