"""Which signed-in sessions are still live: the server-side half of a console session.

The cookie is signed (operators.py), so nobody can make one up; but a signature cannot be taken
back. A cookie copied from a counter's browser (a shared PC, a proxy log, malware) would keep
working for the rest of its 8 hours after the operator signs out. So every sign-in also writes a
record here, named by the session's nonce; every request checks that its session's record is there,
and signing out deletes it: the copied cookie is then refused at its next request, on every replica.

`RedisSessions` keeps the records in Redis (`--redis-url`), shared by every replica, each record
expiring with its session. `ProcessSessions` keeps them in the process: one replica only, and every
operator signs in again after a restart. A store that does not answer refuses the request (HTTP
503): a session it cannot confirm is not taken as live; so the console's readiness (`/healthz`)
follows it (`ping`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from medaid.console.operators import Session

KEY_PREFIX = "console:session:"


class SessionStore(Protocol):
    async def add(self, session: Session) -> None: ...

    async def live(self, session: Session) -> bool: ...

    async def revoke(self, session: Session) -> None: ...

    async def ping(self) -> None:
        """Return if the store answers; raise (as `live` would) if it does not."""


@dataclass
class ProcessSessions:
    """Live sessions held by this process (nonce → (operator id, expiry)): a single replica."""

    records: dict[str, tuple[str, int]] = field(default_factory=dict)

    async def add(self, session: Session) -> None:
        now = time.time()
        for nonce in [n for n, (_, exp) in self.records.items() if exp <= now]:
            del self.records[nonce]
        self.records[session.nonce] = (session.operator_id, session.expires)

    async def live(self, session: Session) -> bool:
        found = self.records.get(session.nonce)
        return found is not None and found[0] == session.operator_id and found[1] > time.time()

    async def revoke(self, session: Session) -> None:
        self.records.pop(session.nonce, None)

    async def ping(self) -> None:
        return None  # the process answers while it serves


class RedisSessions:
    """Live sessions in Redis, shared by the console's replicas: `console:session:<nonce>` holds the
    operator id and expires with the session."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def add(self, session: Session) -> None:
        await self.client.set(KEY_PREFIX + session.nonce, session.operator_id, exat=session.expires)

    async def live(self, session: Session) -> bool:
        found = await self.client.get(KEY_PREFIX + session.nonce)
        return found is not None and (found.decode() if isinstance(found, bytes) else str(found)) == session.operator_id

    async def revoke(self, session: Session) -> None:
        await self.client.delete(KEY_PREFIX + session.nonce)

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()
