"""Where ftlab keeps what it builds once and reuses (tiny tokenizers and backbones).

`FTLAB_CACHE` sets the folder (default `~/.cache/ftlab`). Entries are keyed by a hash of what
made them and written to a temporary folder that is renamed into place, so concurrent processes
(DDP ranks, sweep cells) never read a half-written entry. Under a process group only global rank 0
builds model folders (transformers' `save_pretrained` writes nothing on other ranks); the others wait.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftlab.errors import FTLabError
from ftlab.paths import cache_root as cache_root  # where every cache entry lives


def stable_hash(obj: Any) -> str:
    """A short hash of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cached_dir(kind: str, key: Any, build: Callable[[Path], None], wait: bool = False, timeout: float = 900) -> Path:
    """Return `<cache>/<kind>/<hash(key)>`, calling `build(tmp_dir)` once to fill it. With `wait`, never build:
    wait for another process to (a rank other than 0, where transformers saves nothing)."""
    final = cache_root() / kind / stable_hash(key)
    deadline = time.monotonic() + timeout
    while wait and not final.is_dir():
        if time.monotonic() > deadline:
            raise FTLabError(
                f"waited {timeout:.0f} s for rank 0 to build {final}; on several nodes FTLAB_CACHE must be a "
                "folder all nodes share"
            )
        time.sleep(0.2)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # a real failure, not a lost race with another process
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
