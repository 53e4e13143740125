"""ftlab: fine-tuning research as a composition of backbone, method, objective and data."""

__version__ = "0.1.0"
