"""The services' own Redis slow, frozen or busy, as the callers of the services meet it.

A Redis busy with a long Lua script refuses every other command with `BUSY` once the script has run
`busy-reply-threshold`: nothing of a refused command was done, so the caller hears UNAVAILABLE /
STORE_UNAVAILABLE (retry with the same request id) as for a Redis that does not answer, never
UNKNOWN / INTERNAL_ERROR ("it may have been done"); the resend moves the money once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis
from medaid.common.redis_client import client
from medaid.common.redis_server import RedisServer
from medaid.common.server import start_server
from medaid.registry import policy as policy_mod
from medaid.registry.service import Registry
from medaid.registry.servicer import register
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from support import enroll, rid, test_clock
from test_store_outage import assert_store_unavailable, failed

T = 10.0
# A script that keeps Redis busy for `ARGV[1]` milliseconds (Redis answers nobody else meanwhile).
SLOW_LUA = """
local t = redis.call('TIME')
while true do
  local n = redis.call('TIME')
  if (n[1] - t[1]) * 1000000 + (n[2] - t[2]) >= tonumber(ARGV[1]) * 1000 then return 1 end
end
"""


@dataclass
class Served:
    server: RedisServer
    port: int
    stub: rpb_grpc.RegistryServiceStub
    admin: redis.Redis

    def busy(self, ms: int) -> threading.Thread:
        """Redis running a script for `ms` milliseconds, from a connection of its own; returns once it runs."""
        side = self.server.connection()
        started = threading.Event()

        def run() -> None:
            started.set()
            try:
                side.eval(SLOW_LUA, 0, ms)
            finally:
                side.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        started.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until Redis answers BUSY (past busy-reply-threshold)
            try:
                self.admin.ping()
            except redis.exceptions.ResponseError as exc:
                if str(exc).startswith("BUSY"):
                    return thread
            except redis.exceptions.TimeoutError:
                pass
        raise AssertionError("Redis never answered BUSY")


@pytest.fixture
def served(loop_thread: Any) -> Iterator[Served]:
    server = RedisServer(appendfsync="no").start()

    async def boot() -> Any:
        store = client(server.url)
        registry = Registry(store, policy_mod.load(policy_mod.find_policy_file("13")), clock=test_clock())
        running = await start_server(lambda s: register(s, registry), store=store)
        return running, store

    running, store = loop_thread.run(boot())
    admin = redis.Redis.from_url(server.url, socket_timeout=0.2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            yield Served(server, running.port, rpb_grpc.RegistryServiceStub(ch), admin)
    finally:
        async def stop() -> None:
            await running.stop(0)
            await store.aclose()

        loop_thread.run(stop())
        admin.close()
        server.cleanup()


def test_a_redis_busy_with_a_long_script_is_store_unavailable_and_the_resend_moves_money_once(served: Served):
    pid = enroll(served.stub)
    credit = rpb.CreditAccountRequest(request_id=rid("credit"), id_number=pid, amount_fen=5_000,
                                      kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
    served.admin.config_set("busy-reply-threshold", 100)  # BUSY after 0.1 s of a script, not 5 s
    script = served.busy(3_000)
    try:
        assert_store_unavailable(failed(served.stub.CreditAccount, credit), str(served.server.port))
        assert_store_unavailable(failed(served.stub.GetPerson, rpb.GetPersonRequest(id_number=pid)),
                                 str(served.server.port))
    finally:
        script.join(10)
    # The refused credit did nothing; resent, it moves the money once.
    assert served.stub.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=T).person.balance_fen == 0
    assert served.stub.CreditAccount(credit, timeout=T).balance_fen == 5_000
    assert served.stub.CreditAccount(credit, timeout=T).balance_fen == 5_000
    assert served.stub.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=T).person.balance_fen == 5_000
