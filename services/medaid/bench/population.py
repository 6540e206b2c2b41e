"""The bench's clients and the population it seeds: the people of each province, their accounts,
helpers or family accounts, 北京 wallets, and the funded transfer senders (docs/load-testing.md)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from medaid.bench.model import Config, Person, Population
from medaid.common import rpc
from medaid.common.idnumber import make
from medaid.common.redis_client import sync_client
from medaid.common.tls import TlsConfig
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc

FACE = cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE, attestation_id="bench-face")
REGIONS = {"13": ("130100", "130102"), "11": ("110000", "110105"), "62": ("620100", "620102"),
           "35": ("350200", "350203")}
SHARES = {"13": 5, "11": 2, "62": 2, "35": 1}  # of the population, among the provinces chosen (--provinces)
POOLED = ("62", "35")  # provinces whose 家庭共济 is a family account (SPEC §3b)
DEADLINE_S = 10.0
RESEND = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)  # what a client resends
# The bench's own Redis calls (run counter, money check, Lua baseline): a store that takes a connection
# but never answers ends the run with an error instead of hanging it.
REDIS_TIMEOUT_S = 10.0
# A dedicated sender's credit: ¥50,000 covers 1,000 transfers of the largest amount the harness sends.
SENDER_CREDIT_FEN = 5_000_000
TRANSFER_MAX_FEN = 5_000


class Msgids:
    """Unique, valid msgids: fixmedins_code (12) + yyyyMMddHHmmss (14) + sequence (4)."""

    def __init__(self, seed: int, run: int = 1) -> None:
        self.n = 0
        # Each run against one topology (`run`, counted in its Redis) has msgids of its own: 300 days apart.
        self.base = dt.datetime(2026, 11, 22, 10, 0, 0) + dt.timedelta(days=seed % 300 + 300 * (run - 1))
        self._stamp = (-1, "")  # (second, its yyyyMMddHHmmss): formatted once per 10,000 msgids

    def next(self, province: str) -> tuple[str, pb.Institution]:
        code = f"H{province}{(self.n + 1) % 97:09d}"
        inst = pb.Institution(fixmedins_code=code, mdtrtarea_admvs=REGIONS[province][0])
        return self.next_for(inst), inst

    def next_for(self, inst: pb.Institution) -> str:
        """A fresh msgid of this institution (a 2208 comes from the institution that settled)."""
        self.n += 1
        second = self.n // 10000
        if self._stamp[0] != second:
            self._stamp = (second, (self.base + dt.timedelta(seconds=second)).strftime("%Y%m%d%H%M%S"))
        return f"{inst.fixmedins_code}{self._stamp[1]}{self.n % 10000:04d}"


class Seeding:
    """The clients of a topology, and seeding its population (`Harness` drives the phases)."""

    def __init__(self, cfg: Config, addresses: dict[str, str], redis_url: str, tls: TlsConfig | None = None) -> None:
        self.cfg = cfg
        self.tls = tls  # mTLS as the `bench` identity towards the topology (never towards the echo baseline)
        self.addresses = addresses
        self.redis_url = redis_url
        self.rng = random.Random(cfg.seed)
        # Which run against this topology (count_run; 0: not counted yet): its people and msgids are its own.
        self.run = 0
        self.msgids = Msgids(cfg.seed)
        self._channels: list[grpc.aio.Channel] = []

    # --- clients -------------------------------------------------------------------------

    def _chan(self, address: str, secure: bool = True) -> grpc.aio.Channel:
        options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
        if secure and self.tls is not None:
            ch = rpc.plain_channel(address, tls=self.tls, options=options)
        else:
            ch = grpc.aio.insecure_channel(rpc.target(address), options=options)
        self._channels.append(ch)
        return ch

    async def open(self) -> None:
        self.routers = [pb_grpc.RouterServiceStub(self._chan(self.addresses["router"]))
                        for _ in range(self.cfg.channels)]
        self.registries = {p: rpb_grpc.RegistryServiceStub(self._chan(self.addresses[f"registry-{p}"]))
                           for p in REGIONS if f"registry-{p}" in self.addresses}
        self.wallet = wpb_grpc.WalletServiceStub(self._chan(self.addresses["wallet"]))

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()

    def router(self) -> pb_grpc.RouterServiceAsyncStub:
        return self.routers[self.rng.randrange(len(self.routers))]

    def count_run(self) -> int:
        """Count this run in the topology's Redis (`bench:runs`): `make bench`, the Locust scenario's
        seeding and the reconciliation bench each get a number of their own."""
        sync = sync_client(self.redis_url, REDIS_TIMEOUT_S)  # single Redis or every master of a cluster
        try:
            self.run = int(sync.incr("bench:runs"))
        finally:
            sync.close()
        return self.run

    # --- population ----------------------------------------------------------------------

    async def seed_population(self) -> Population:
        if not self.run:
            self.count_run()
        n = self.cfg.population
        weights = {p: w for p, w in SHARES.items() if p in self.cfg.provinces}
        counts = {p: n * w // sum(weights.values()) for p, w in weights.items() if p != "11"}
        counts["11"] = n - sum(counts.values())
        people: list[Person] = []
        seq = 0
        sem = asyncio.Semaphore(64)
        credited = 0

        async def call(method: Any, request: Any) -> Any:
            # The RPC starts inside the semaphore: at most 64 seeding calls in flight, not thousands.
            # UNAVAILABLE (e.g. FAMILY_BUSY while many accounts are created at once) and a deadline
            # passed (a busy host) are retried with the same request, as the answer asks: every
            # seeding call carries a request id, so a resend has one effect.
            async with sem:
                for attempt in range(50):
                    try:
                        return await method(request, timeout=DEADLINE_S)
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in RESEND or attempt == 49:
                            raise
                    await asyncio.sleep(random.uniform(0.005, 0.05))

        # Each run against one topology takes divisions of its own, so its people are new there.
        span = (n + self.sender_count()) // 1000 + 1
        self.msgids = Msgids(self.cfg.seed, self.run)

        def new_id(province: str, adult: bool) -> str:
            nonlocal seq
            seq += 1
            # A block of 1,000 people: a division of its own (100 per province), then, once this
            # topology's runs have taken all 100, a later day of the birth year (365 × 100 blocks).
            block = seq // 1000 + span * (self.run - 1)
            division = REGIONS[province][1][:4] + f"{block % 100:02d}"
            year = 1960 + seq % 40 if adult else 2012 + seq % 10
            birth = (dt.date(year, 1, 1) + dt.timedelta(days=block // 100 % 365)).strftime("%Y%m%d")
            return make(division, birth, f"{seq % 1000:03d}")

        enrolls: list[Awaitable[Any]] = []
        for prov, count in counts.items():
            stub = self.registries[prov]
            region = REGIONS[prov][0]
            for i in range(count):
                employee = (i % 4) < 2 or prov == "11" and i % 4 == 2
                p = Person(new_id(prov, employee), prov, employee)
                people.append(p)
                itype = cpb.INSURANCE_TYPE_EMPLOYEE if employee else cpb.INSURANCE_TYPE_RESIDENT
                enrolls.append(call(stub.EnrollPerson, rpb.EnrollPersonRequest(
                    request_id=f"bench-enroll-{p.pid}", id_number=p.pid, name="测试", insurance_type=itype,
                    pooling_region=region)))
        await asyncio.gather(*enrolls)
        credits: list[Awaitable[Any]] = []
        for p in people:
            if p.employee:
                # 福建 keeps ¥2,000 in the account when a member 划拨s
                amount = self.rng.randrange(250_000 if p.province == "35" else 50_000, 400_000)
                credited += amount
                credits.append(call(self.registries[p.province].CreditAccount, rpb.CreditAccountRequest(
                    request_id=f"bench-credit-{p.pid}", id_number=p.pid, amount_fen=amount,
                    kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION)))
        await asyncio.gather(*credits)
        binds: list[Awaitable[Any]] = []
        families: list[Awaitable[Any]] = []
        by_prov: dict[str, list[Person]] = {}
        for p in people:
            by_prov.setdefault(p.province, []).append(p)
        for prov, group in by_prov.items():
            for i in range(0, len(group) - 3, 4):
                helpers = [h for h in group[i:i + 4] if h.employee]
                members = [m for m in group[i:i + 4] if not m.employee]
                if prov in POOLED:  # a family account (SPEC §3b): the first employee creates it
                    if helpers:
                        families.append(self._seed_family(call, prov, helpers[0],
                                                          [p for p in group[i:i + 4] if p is not helpers[0]]))
                    continue
                for m in members:
                    for h in helpers:
                        m.helpers.append(h.pid)
                        binds.append(call(self.registries[prov].BindMutualAid, rpb.BindMutualAidRequest(
                            request_id=f"bench-bind-{h.pid}-{m.pid}"[:64], helper_id_number=h.pid,
                            member_id_number=m.pid, relation=cpb.RELATION_CHILD, member_verification=FACE)))
        await asyncio.gather(*binds, *families)
        beijing = [p for p in people if p.province == "11"]
        opens = []
        for r in beijing:
            r.wallet = True
            opens.append(call(self.wallet.OpenWallet, wpb.OpenWalletRequest(
                request_id=f"bench-open-{r.pid}", owner_id_number=r.pid, province="11", use_place_admdvs="110000",
                real_name=FACE)))
        await asyncio.gather(*opens)
        senders: list[Person] = []
        funding: list[Awaitable[Any]] = []
        for i in range(self.sender_count() if beijing else 0):
            prov = ("13", "62" if "62" in self.cfg.provinces else "13")[i % 2]
            s = Person(new_id(prov, True), prov, True)
            senders.append(s)
            credited += SENDER_CREDIT_FEN
            funding.append(self._enroll_and_fund(call, s))
        await asyncio.gather(*funding)
        # A sender holds a wallet too (SPEC §5).
        await asyncio.gather(*(call(self.wallet.OpenWallet, wpb.OpenWalletRequest(
            request_id=f"bench-open-{s.pid}", owner_id_number=s.pid, province=s.province,
            use_place_admdvs=REGIONS[s.province][0], real_name=FACE)) for s in senders))
        pairs = [(s, beijing[i % len(beijing)]) for i, s in enumerate(senders)]
        return Population(people, [p for p in people if p.employee], [p for p in people if p.helpers], pairs,
                          credited, self.run)

    def sender_count(self) -> int:
        """Two senders a worker (a sender has one unaccepted transfer at a time), at least 1 % of the population."""
        return max(2 * self.cfg.concurrency, self.cfg.population // 100)

    async def _enroll_and_fund(self, call: Callable[[Any, Any], Awaitable[Any]], s: Person) -> None:
        stub = self.registries[s.province]
        await call(stub.EnrollPerson, rpb.EnrollPersonRequest(
            request_id=f"bench-enroll-{s.pid}", id_number=s.pid, name="测试",
            insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE, pooling_region=REGIONS[s.province][0]))
        await call(stub.CreditAccount, rpb.CreditAccountRequest(
            request_id=f"bench-credit-{s.pid}", id_number=s.pid, amount_fen=SENDER_CREDIT_FEN,
            kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION))

    async def _seed_family(self, call: Callable[..., Awaitable[Any]], prov: str, creator: Person,
                           others: list[Person]) -> None:
        """创建 → 划拨 → 邀请 (16 and over accept with face verification): the others then spend from it."""
        stub = self.registries[prov]
        fid = (await call(stub.CreateFamilyAccount, fpb.CreateFamilyAccountRequest(
            request_id=f"bench-fam-{creator.pid}", creator_id_number=creator.pid, commitment=FACE,
            initial_transfer_fen=30_000))).account.family_id
        for m in others:
            await call(stub.InviteMember, fpb.InviteMemberRequest(
                request_id=f"bench-inv-{m.pid}", family_id=fid, creator_id_number=creator.pid, member_id_number=m.pid,
                relation=cpb.RELATION_CHILD))
            if m.employee:  # adults accept with face verification; under 16 joined at once
                await call(stub.RespondToInvitation, fpb.RespondToInvitationRequest(
                    request_id=f"bench-acc-{m.pid}", family_id=fid, member_id_number=m.pid, accept=True,
                    verification=FACE))
            m.helpers.append(creator.pid)
