"""Where ftlab keeps what it builds once and reuses: `FTLAB_CACHE`, default ~/.cache/ftlab (standard library
only: the command's help cache reads it before anything heavy is imported)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("FTLAB_CACHE", Path.home() / ".cache" / "ftlab"))
