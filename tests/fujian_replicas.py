"""Two 福建 (35) registry replicas on one Redis, as the recovery-fence tests drive them: processes
restarted on the demo timeline, channels with or without gRPC retries, enrolment with funds, and the
money check that ends every test."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from medaid.bench import money
from medaid.common.lock import FencedLocks, Lease
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from support import Timeline, new_id, rid

QUIET = {"MEDAID_RECOVERY_GRACE_MS": "600000"}  # no recovery pass while a test sets its scene
RECOVER = {"MEDAID_RECOVERY_GRACE_MS": "1000"}
# Every process restarted here: a lock left by one killed or stalled expires after 3 s (--lock-ttl-ms),
# not the default 10 s, so a test waits less for what the lock's expiry lets happen. Still far above
# any step of a live request, so no live holder loses its lock on a loaded machine.
LOCKS = {"MEDAID_LOCK_TTL_MS": "3000"}

T = 10.0
OPEN = Keys("35").open_settlements()


@dataclass
class Env:
    topo: Topology
    timeline: Timeline
    credited: int = 0
    channels: dict[tuple[str, int], grpc.Channel] = field(default_factory=dict)

    def restart(self, instance: str, env: dict[str, str]) -> None:
        """On the demo timeline, continued: a restarted process does not go back in time."""
        self.topo.clock = self.timeline.spec()
        self.topo.restart(instance, env={**LOCKS, **env})

    def stub(self, instance: str = "registry-35#2", retries: bool = True) -> pb_grpc.RegistryServiceStub:
        """A channel per process incarnation; `retries=False`: a call is sent once (no resend)."""
        key = (instance, self.topo.services[instance].proc.pid, retries)
        if key not in self.channels:
            self.channels[key] = grpc.insecure_channel(self.topo.address(instance),
                                                       options=[("grpc.enable_retries", int(retries))])
        return pb_grpc.RegistryServiceStub(self.channels[key])

    def redis(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.topo.redis.port, socket_timeout=10)

    def crash(self, instance: str, point: str, call: Callable[[pb_grpc.RegistryServiceStub], object]) -> None:
        """`instance`, armed to die at `point` (MEDAID_FAULT), takes `call` (sent once) and dies there."""
        self.restart(instance, {**QUIET, "MEDAID_FAULT": point})
        proc = self.topo.services[instance].proc
        with pytest.raises(grpc.RpcError) as err:
            call(self.stub(instance, retries=False))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL, f"{instance} should have died at {point}"

    def hold_lock(self, tag: str) -> Callable[[], None]:
        """A lock (a person's, a family's) taken — once a dead holder's has expired — and held by another
        holder, as a long operation would; returns its release."""
        port = self.topo.redis.port

        async def take() -> Lease:
            client = aioredis.Redis(host="127.0.0.1", port=port)
            try:
                return await FencedLocks(client).acquire(tag, ttl_ms=60_000, wait_ms=20_000)
            finally:
                await client.aclose()

        lease = asyncio.run(take())

        def release() -> None:
            async def go() -> None:
                client = aioredis.Redis(host="127.0.0.1", port=port)
                try:
                    await FencedLocks(client).release(lease)
                finally:
                    await client.aclose()
            asyncio.run(go())

        return release

    def enroll(self, funds: int = 0, itype: int = cpb.INSURANCE_TYPE_EMPLOYEE, birth: str = "19800101") -> str:
        pid = new_id("350203", birth)
        s = self.stub()
        s.EnrollPerson(pb.EnrollPersonRequest(request_id=rid("enroll"), id_number=pid, name="张三",
                                              insurance_type=itype, pooling_region="350200"), timeout=T)
        if funds:
            s.CreditAccount(pb.CreditAccountRequest(request_id=rid("credit"), id_number=pid, amount_fen=funds,
                                                    kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"),
                            timeout=T)
            self.credited += funds
        return pid

    def balance(self, pid: str) -> int:
        return int(self.stub().GetPerson(pb.GetPersonRequest(id_number=pid), timeout=T).person.balance_fen)

    def account(self, fid: str) -> fpb.FamilyAccount:
        return self.stub().GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid), timeout=T).account

    def settled(self) -> None:
        """Money conserved to the fen, nothing in flight, nothing left in the recovery index."""
        with self.redis() as r:
            report = money.check(r, expected_credits_fen=self.credited)
            assert report.conserved and report.in_flight_fen == 0, report.as_dict()
            assert r.zcard(OPEN) == 0, r.zrange(OPEN, 0, -1)


def process_state(pid: int) -> str:
    """A process's state letter (`T`: stopped by a fault point's SIGSTOP)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def started(env_type: type[Env], settings: dict[str, dict[str, str]],
            provinces: tuple[str, ...] = ("35",)) -> Iterator[Env]:
    """A module's topology of `provinces` (福建 by default; two registry replicas each, on one Redis) as
    `env_type`, each replica restarted with its `settings`; afterwards every process stopped at a
    `stop:` fault point is let go and the topology stopped (for a module fixture:
    `yield from started(...)`)."""
    topo = Topology.start(provinces=provinces, replicas={f"registry-{p}": 2 for p in provinces}, wallet=False,
                          router=False, gateway=False, clock=DEMO_CLOCK)
    e = env_type(topo, Timeline())
    try:
        for instance, env in settings.items():
            e.restart(instance, env)
        yield e
    finally:
        for ch in e.channels.values():
            ch.close()
        for svc in topo.services.values():
            if svc.proc.poll() is None:
                svc.proc.send_signal(signal.SIGCONT)
        topo.stop()
