"""A requeue notice that arrives before a fit can act on it.

SLURM sends SIGUSR1 (`--signal=B:USR1@N`) some time before a job's limit; its default action ends the process.
A notice that comes while `ftlab fit` is still importing torch or loading the model would end the job without a
checkpoint or a requeue. `hold()`, called first thing by the `fit` command (standard library only, so before
anything slow), records such a signal instead; the fit's Preemption callback takes it over at setup (`release()`)
and stops at the first step boundary with a checkpoint and a requeue, as for a notice that comes mid-fit.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

_held: dict[int, Any] = {}
_pending: int | None = None


def _record(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending = signum


def held_signals() -> tuple[int, ...]:
    """The signals `hold` records: SIGUSR1 where the platform has it."""
    return (int(signal.SIGUSR1),) if hasattr(signal, "SIGUSR1") else ()


def hold() -> None:
    """Until `release`, record SIGUSR1 instead of acting on it (main thread only, as any signal handler)."""
    for signum in held_signals():
        if signum not in _held:
            _held[signum] = signal.signal(signum, _record)


def release(keep_current: bool = False) -> int | None:
    """Give the held signals their previous handlers back, where the holding handler is still in place (never
    over one installed since; with `keep_current`, never at all: the caller has installed its own); the signal
    that arrived meanwhile, or None."""
    global _pending
    for signum, previous in _held.items():
        if not keep_current and signal.getsignal(signum) is _record:
            signal.signal(signum, previous)
    _held.clear()
    pending, _pending = _pending, None
    return pending
