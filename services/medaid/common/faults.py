"""Fault injection for crash tests, off unless enabled.

`MEDAID_FAULT=<point>` makes the process kill itself with SIGKILL (a real crash: no cleanup, no
reply) the first time it reaches that named point between two saga steps. `MEDAID_FAULT=stop:<point>`
stops it there with SIGSTOP instead (a stalled process: the test resumes it with SIGCONT). Several,
comma-separated (`stop:<a>,<b>`: stalled at a, then, once resumed, killed at b), each fire once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable


def from_env() -> Callable[[str], None] | None:
    spec = os.environ.get("MEDAID_FAULT", "")
    if not spec:
        return None
    armed = {item.removeprefix("stop:"): signal.SIGSTOP if item.startswith("stop:") else signal.SIGKILL
             for item in spec.split(",") if item}

    def hook(reached: str) -> None:
        sig = armed.pop(reached, None)
        if sig is not None:
            os.kill(os.getpid(), sig)

    return hook
