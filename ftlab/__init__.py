"""ftlab: fine-tuning research as a composition of backbone, method, objective and data."""

import logging
import time

__version__ = "0.1.0"

STARTED = time.time()
"""When ftlab was first imported in this process (a run's `startup_seconds` counts from here)."""


def _quiet_optional_hub_kernel(record: logging.LogRecord) -> bool:
    # bitsandbytes tries to fetch an optional CPU 4-bit kernel from the Hugging Face hub at import and
    # warns when it cannot; ftlab never downloads at run time and bitsandbytes falls back to its own
    # CPU kernel, so the warning says nothing actionable.
    return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_quiet_optional_hub_kernel)
