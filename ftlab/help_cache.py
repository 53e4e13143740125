"""`ftlab fit --help` (and validate, test, predict) answered without importing torch or Lightning.

The text of a Lightning subcommand's help is built by LightningCLI from the classes' signatures, which takes the
imports of torch, Lightning and transformers (about 8 s on a laptop CPU). It depends only on the installed code,
so the first `ftlab SUBCOMMAND --help` records what it printed under `FTLAB_CACHE/help/`, keyed by ftlab's
files (paths, sizes, modification times), the versions of the libraries that shape the options, the Python
interpreter and the terminal width; later calls print the recorded text (well under a second). Any change to
ftlab's code or an upgrade gives a new key, so a stale text is never shown; each subcommand keeps its KEEP newest
texts (other terminal widths, other installs), older ones are removed when a new one is saved. Only the bare form
is cached (`ftlab fit --help`); `--help` after other arguments, or `--model.method.help CLASS`, always runs the
parser.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import ftlab
from ftlab.paths import cache_root

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
KEEP = 8
LIBRARIES = ("lightning", "jsonargparse", "torch", "transformers", "peft", "torchmetrics", "docstring-parser")


def is_plain_help(argv: list[str]) -> bool:
    return len(argv) == 2 and argv[0] in LIGHTNING_SUBCOMMANDS and argv[1] in ("-h", "--help")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def key(argv: list[str]) -> str:
    """What the help text depends on, hashed."""
    package = Path(ftlab.__file__).resolve().parent
    files = []
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        files.append((str(path.relative_to(package)), stat.st_size, stat.st_mtime_ns))
    environment = {k: v for k, v in os.environ.items() if k.startswith("JSONARGPARSE") or k == "COLUMNS"}
    state = [
        ftlab.__version__,
        argv,
        sys.executable,
        sys.version,
        files,
        {name: _version(name) for name in LIBRARIES},
        environment,
        shutil.get_terminal_size().columns,
    ]
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:20]


def _path(argv: list[str]) -> Path:
    return cache_root() / "help" / f"{argv[0]}-{key(argv)}.txt"


def print_cached(argv: list[str]) -> bool:
    """Print the recorded help of `argv` and return True, or return False when there is none."""
    try:
        text = _path(argv).read_text(encoding="utf-8")
    except OSError:  # none recorded, or pruned meanwhile by another call
        return False
    sys.stdout.write(text)
    sys.stdout.flush()
    return True


class _Tee(io.TextIOBase):
    """stdout that also keeps what is written (anything else is the real stdout's)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.kept = io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def record(argv: list[str], run: Callable[[], None]) -> None:
    """Run the parser's help (`run`), keeping what it printed for later calls when it exits 0."""
    real, tee = sys.stdout, _Tee(sys.stdout)
    sys.stdout = tee
    try:
        run()
    except SystemExit as done:
        sys.stdout = real
        if done.code in (0, None) and tee.kept.getvalue():
            _save(_path(argv), tee.kept.getvalue())
        raise
    finally:
        sys.stdout = real


def _save(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        prune(path.parent, path.name.split("-", 1)[0])
    except OSError:  # a read-only or full cache only costs the next call its speed
        return


def prune(folder: Path, subcommand: str, keep: int = KEEP) -> None:
    """Removes all but the `keep` newest recorded texts of `subcommand` (written after an edit of ftlab, an
    upgrade, or at another terminal width: each has its own key, and nothing else removes the old ones)."""
    texts = sorted(folder.glob(f"{subcommand}-*.txt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in texts[keep:]:
        old.unlink(missing_ok=True)
