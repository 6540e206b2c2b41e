"""Fault injection for crash tests, off unless enabled.

`MEDAID_FAULT=<point>` makes the process kill itself with SIGKILL (a real crash: no cleanup, no
reply) the first time it reaches that named point between two saga steps. `MEDAID_FAULT=stop:<point>`
stops it there with SIGSTOP instead (a stalled process: the test resumes it with SIGCONT).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable


def from_env() -> Callable[[str], None] | None:
    point = os.environ.get("MEDAID_FAULT", "")
    if not point:
        return None

    stop = point.startswith("stop:")
    point = point.removeprefix("stop:")
    fired: list[bool] = []

    def hook(reached: str) -> None:
        if reached == point and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGSTOP if stop else signal.SIGKILL)

    return hook
