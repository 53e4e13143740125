"""One fit holds a run folder at a time: `<run folder>/.ftlab.lock`.

The lock is a small JSON file (pid, host, the process's start time, the SLURM job, the time taken), created
atomically with its content: written to a temporary name and hard-linked to the lock's name, which fails when a
lock is there already, so two fits starting at once cannot both win. A second fit into a held folder stops with
one sentence naming the holder. A lock left by a process that died without cleaning up (kill -9, a node failure)
is stale and taken over when its holder is provably gone: the same host and no process with that pid and start
time, or the same SLURM job (a requeued job restarts under its own id once the old process has ended).
A lock held on another host is never taken over: the message says which file to delete if that run is gone.

Only the launching process locks: ranks that Lightning or srun start (RANK, LOCAL_RANK or SLURM_PROCID other
than 0) run inside their rank 0's lock.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from ftlab.errors import FTLabError

LOCK = ".ftlab.lock"


def is_launched_rank() -> bool:
    """A process started by a launcher for a rank other than 0 (it runs under rank 0's lock)."""
    return any(os.environ.get(k, "0") != "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name in parentheses


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return start is None or _process_start(pid) in (None, start)  # a reused pid is another process


class RunLock:
    """The lock of run folder `root`; `acquire()` takes it or raises FTLabError, `release()` gives it back."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK
        self.held = False
        self._created_root = False

    def me(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _process_start(os.getpid()),
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: written by something else; treated as held

    def stale(self, holder: dict[str, Any]) -> bool:
        mine = self.me()
        same_host = holder.get("host") == mine["host"]
        if holder.get("slurm_job") and holder.get("slurm_job") == mine["slurm_job"] and not same_host:
            return True  # this job was requeued onto another node: its earlier process has ended
        if not same_host or not isinstance(holder.get("pid"), int):
            return False
        return not _alive(holder["pid"], holder.get("start"))

    def acquire(self) -> None:
        if not self.root.exists():
            self.root.mkdir(parents=True)
            self._created_root = True
        fd, tmp = tempfile.mkstemp(prefix=f"{LOCK}.", dir=self.root)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.me(), f)
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic: fails if the lock exists
                    self.held = True
                    atexit.register(self.release)
                    return
                except FileExistsError:
                    holder = self.holder()
                    if holder is None:
                        continue  # released meanwhile
                    if not self.stale(holder):
                        raise FTLabError(self.in_use(holder)) from None
                    with contextlib.suppress(FileNotFoundError):  # of two takers, one renames it away
                        os.rename(self.path, f"{tmp}.stale")
                        os.unlink(f"{tmp}.stale")
            raise FTLabError(f"run folder {self.root}: could not take its lock {self.path}")
        finally:
            os.unlink(tmp)
            if not self.held:
                self._remove_created_root()

    def in_use(self, holder: dict[str, Any]) -> str:
        if not holder:
            return f"run folder {self.root} is locked by {self.path}, which ftlab cannot read; delete it if no fit runs"
        job = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
        return (
            f"run folder {self.root} is in use by another fit (pid {holder.get('pid')} on host {holder.get('host')}"
            f"{job}, since {holder.get('since')}); wait for it to end or choose another --trainer.default_root_dir "
            f"(if that process is gone, delete {self.path})"
        )

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = self.holder() or {}
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._remove_created_root()

    def _remove_created_root(self) -> None:
        """A folder this fit created and left without a file (a start that failed; loggers make their folders
        early) goes again: the disk is as it was."""
        if not self._created_root:
            return
        for folder in sorted((p for p in self.root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        with contextlib.suppress(OSError):
            self.root.rmdir()
