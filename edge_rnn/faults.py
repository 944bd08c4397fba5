"""Named crash points for the kill-and-resume tests (``EDGE_RNN_CRASH_AT``).

``EDGE_RNN_CRASH_AT=checkpoint:2`` makes the process SIGKILL itself the 2nd time it reaches the
point ``checkpoint`` (inside a checkpoint write, after its files are written, before the rename).
A real ``kill -9`` at a moment the test chooses, without sleeping and hoping: the process dies
exactly as it would from the OOM killer or a pulled plug, no ``finally`` and no ``atexit`` run.
Unset (always, outside tests), ``crash_point`` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "EDGE_RNN_CRASH_AT"
_seen: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL this process if ``EDGE_RNN_CRASH_AT`` names this point and its count is reached."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
