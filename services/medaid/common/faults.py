"""Fault injection for crash tests, off unless enabled.

`MEDAID_FAULT=<point>` makes the process kill itself with SIGKILL (a real crash: no cleanup, no
reply) the first time it reaches that named point between two saga steps.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable


def from_env() -> Callable[[str], None] | None:
    point = os.environ.get("MEDAID_FAULT", "")
    if not point:
        return None

    def hook(reached: str) -> None:
        if reached == point:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook
