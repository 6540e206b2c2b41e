"""Load harness: seed a population, drive phases (settle, transfer, mixed), report like ghz, and
give the money verdict. Baselines in the same run: a gRPC echo and a raw Redis Lua debit loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
import grpc
import redis.asyncio as aioredis

from medaid.bench import gateway, money, plot
from medaid.bench.cpu import CpuMeter
from medaid.bench.model import Config, Person, Population
from medaid.bench.report import git_sha
from medaid.bench.stats import LAST_CODE, OpStats, Recorder
from medaid.common import rpc
from medaid.common.errors import error_info
from medaid.common.idnumber import make
from medaid.common.redis_client import client as redis_client
from medaid.common.redis_client import is_cluster_url, sync_client
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
# A dedicated sender's credit: ¥50,000 covers 1,000 transfers of the largest amount the harness sends.
SENDER_CREDIT_FEN = 5_000_000
TRANSFER_MAX_FEN = 5_000


class Msgids:
    """Unique, valid msgids: fixmedins_code (12) + yyyyMMddHHmmss (14) + sequence (4)."""

    def __init__(self, seed: int) -> None:
        self.n = 0
        self.base = dt.datetime(2026, 11, 22, 10, 0, 0) + dt.timedelta(days=seed % 300)
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


def _code_reason(exc: grpc.aio.AioRpcError) -> tuple[str, str]:
    info = error_info(exc)
    return exc.code().name, (info.reason if info is not None else "")


class Harness:
    def __init__(self, cfg: Config, addresses: dict[str, str], redis_url: str, tls: TlsConfig | None = None) -> None:
        self.cfg = cfg
        self.tls = tls  # mTLS as the `bench` identity towards the topology (never towards the echo baseline)
        self.addresses = addresses
        self.redis_url = redis_url
        self.rng = random.Random(cfg.seed)
        self.msgids = Msgids(cfg.seed)
        self.settled_fen = 0  # what settlement answers say left accounts/wallets (net of reversals)
        self.settlements: list[tuple[pb.SettleRequest, pb.SetlInfo]] = []
        self.replay_hits = 0
        self.replay_mismatches = 0
        self._channels: list[grpc.aio.Channel] = []
        # A sender has one unaccepted transfer at a time (SPEC): the harness, like a wallet app, never
        # starts a sender's next transfer before the last one is accepted, even when two workers'
        # picks land on the same sender (a small population).
        self._sender_busy: dict[str, asyncio.Lock] = {}

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

    # --- population ----------------------------------------------------------------------

    async def seed_population(self) -> Population:
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
            async with sem:
                return await method(request, timeout=DEADLINE_S)

        def new_id(province: str, adult: bool) -> str:
            nonlocal seq
            seq += 1
            division = REGIONS[province][1][:4] + f"{(seq // 1000) % 100:02d}"
            birth = f"{1960 + seq % 40}0101" if adult else f"{2012 + seq % 10}0101"
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
                          credited)

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

    # --- operations ----------------------------------------------------------------------

    def _settle_request(self, pop: Population, need_helper: bool) -> pb.SettleRequest:
        p = self.rng.choice(pop.members if need_helper and pop.members else pop.employees)
        msgid, inst = self.msgids.next(p.province)
        return pb.SettleRequest(msgid=msgid, institution=inst, input=pb.SettleInput(
            psn_no=p.pid, insuplc_admdvs=REGIONS[p.province][0], psn_part_amt_fen=self.rng.randrange(100, 20_000),
            acct_used_flag="1", category=cpb.CATEGORY_OUTPATIENT, mdtrt_id=msgid[-12:]))

    async def op_settle(self, pop: Population, st: OpStats, need_helper: bool | None = None,
                        scheduled: float | None = None) -> None:
        """One 2207; its latency counts from `scheduled` (the open loop's send time) when given."""
        req = self._settle_request(pop, self.rng.random() < 0.5 if need_helper is None else need_helper)
        t0 = time.perf_counter() if scheduled is None else scheduled
        try:
            resp = await self.router().Settle(req, timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            st.record((time.perf_counter() - t0) * 1000, *_code_reason(exc))
            return
        st.record((time.perf_counter() - t0) * 1000, "OK", resp.setlinfo.mulaid_reason)
        s = resp.setlinfo
        self.settled_fen += s.acct_pay_fen + s.wallet_pay_fen + s.acct_mulaid_pay_fen
        self.settlements.append((req, s))

    async def op_presettle(self, pop: Population, st: OpStats) -> None:
        req = self._settle_request(pop, self.rng.random() < 0.5)
        t0 = time.perf_counter()
        try:
            await self.router().PreSettle(pb.PreSettleRequest(msgid=req.msgid, institution=req.institution,
                                                              input=req.input), timeout=DEADLINE_S)
            st.record((time.perf_counter() - t0) * 1000)
        except grpc.aio.AioRpcError as exc:
            st.record((time.perf_counter() - t0) * 1000, *_code_reason(exc))

    async def op_lookup(self, pop: Population, st: OpStats) -> None:
        p = self.rng.choice(pop.people)
        msgid, inst = self.msgids.next(p.province)
        t0 = time.perf_counter()
        try:
            await self.router().QueryPerson(pb.QueryPersonRequest(msgid=msgid, institution=inst,
                                                                  mdtrt_cert_type="02", mdtrt_cert_no=p.pid),
                                            timeout=DEADLINE_S)
            st.record((time.perf_counter() - t0) * 1000)
        except grpc.aio.AioRpcError as exc:
            st.record((time.perf_counter() - t0) * 1000, *_code_reason(exc))

    async def op_reverse(self, pop: Population, st: OpStats) -> None:
        if not self.settlements:
            return await self.op_settle(pop, st)
        req, s = self.settlements.pop(self.rng.randrange(len(self.settlements)))
        msgid = self.msgids.next_for(req.institution)
        t0 = time.perf_counter()
        try:
            await self.router().ReverseSettlement(pb.ReverseSettlementRequest(
                msgid=msgid, institution=req.institution, setl_id=s.setl_id, psn_no=s.psn_no,
                insuplc_admdvs=req.input.insuplc_admdvs), timeout=DEADLINE_S)
            st.record((time.perf_counter() - t0) * 1000)
            self.settled_fen -= s.acct_pay_fen + s.wallet_pay_fen + s.acct_mulaid_pay_fen
        except grpc.aio.AioRpcError as exc:
            st.record((time.perf_counter() - t0) * 1000, *_code_reason(exc))
            self.settlements.append((req, s))

    async def op_replay(self, pop: Population, st: OpStats) -> None:
        if not self.settlements:
            return await self.op_settle(pop, st)
        req, first = self.settlements[self.rng.randrange(len(self.settlements))]
        t0 = time.perf_counter()
        try:
            resp = await self.router().Settle(req, timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            st.record((time.perf_counter() - t0) * 1000, *_code_reason(exc))
            return
        st.record((time.perf_counter() - t0) * 1000)
        if resp.setlinfo == first:
            self.replay_hits += 1
        else:
            self.replay_mismatches += 1

    async def op_gateway(self, pop: Population, session: aiohttp.ClientSession, url: str, st: OpStats) -> None:
        req = self._settle_request(pop, self.rng.random() < 0.5)
        i = req.institution
        body = gateway.envelope_2207(req.msgid, i.fixmedins_code, i.mdtrtarea_admvs, req.input.psn_no,
                                     req.input.insuplc_admdvs, req.input.psn_part_amt_fen)
        t0 = time.perf_counter()
        try:
            async with session.post(url, json=body) as resp:
                raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:  # no answer: as gRPC would say, UNAVAILABLE
            st.record((time.perf_counter() - t0) * 1000, "UNAVAILABLE", type(exc).__name__)
            return
        if resp.status != 200:
            st.record((time.perf_counter() - t0) * 1000, f"HTTP_{resp.status}")
            return
        status, why, fen = gateway.read_answer(raw)
        st.record((time.perf_counter() - t0) * 1000, status, why)
        self.settled_fen += fen

    async def op_transfer(self, pair: tuple[Person, Person], st: OpStats, tag: str) -> None:
        sender, recipient = pair
        busy = self._sender_busy.setdefault(sender.pid, asyncio.Lock())
        async with busy:
            await self._transfer(sender, recipient, st, tag)

    async def _transfer(self, sender: Person, recipient: Person, st: OpStats, tag: str) -> None:
        self.msgids.n += 1
        tid = f"bench-{tag}-{self.cfg.seed}-{self.msgids.n}"
        t0 = time.perf_counter()  # after the sender is free: the wait is the harness's, not the system's
        try:
            await self.wallet.CreateTransfer(wpb.CreateTransferRequest(
                request_id=tid, sender_id_number=sender.pid, sender_province=sender.province,
                recipient_id_number=recipient.pid, relation=cpb.RELATION_PARENT,
                amount_fen=self.rng.randrange(100, TRANSFER_MAX_FEN), verification=FACE), timeout=DEADLINE_S)
            await self.wallet.AcceptTransfer(wpb.AcceptTransferRequest(
                request_id=f"{tid}-acc", transfer_id=tid, recipient_id_number=recipient.pid), timeout=DEADLINE_S)
            st.record((time.perf_counter() - t0) * 1000)
        except grpc.aio.AioRpcError as exc:
            st.record((time.perf_counter() - t0) * 1000, *_code_reason(exc))

    # --- drivers -------------------------------------------------------------------------

    async def closed_loop(self, name: str, worker: Callable[[int], Awaitable[None]], st: OpStats,
                          duration_s: float) -> float:
        stop_at = time.perf_counter() + duration_s
        t_start = time.perf_counter()

        async def run(w: int) -> None:
            while time.perf_counter() < stop_at:
                await worker(w)

        progress = asyncio.create_task(self._progress(name, st, t_start, stop_at))
        await asyncio.gather(*(run(w) for w in range(self.cfg.concurrency)))
        progress.cancel()
        return time.perf_counter() - t_start

    async def open_loop(self, name: str, worker: Callable[[int, float], Coroutine[Any, Any, None]], st: OpStats,
                        duration_s: float, rate: float) -> float:
        """Fire at a fixed rate regardless of completions; each request is handed its scheduled send time,
        from which its latency counts, so a generator that falls behind does not hide it (no
        coordinated omission)."""
        t_start = time.perf_counter()
        stop_at = t_start + duration_s
        progress = asyncio.create_task(self._progress(name, st, t_start, stop_at))
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while True:
            due = t_start + i / rate
            if due >= stop_at:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(worker(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.gather(*tasks)
        progress.cancel()
        return time.perf_counter() - t_start

    async def _progress(self, name: str, st: OpStats, t0: float, stop_at: float) -> None:
        if self.cfg.quiet:
            return
        while True:
            await asyncio.sleep(1.0)
            el = time.perf_counter() - t0
            sys.stderr.write(f"\r[{name:<8}] {el:5.1f}s/{stop_at - t0:4.1f}s  done={st.count:<7} "
                             f"rps={st.count / el:7.1f}  errors={st.errors}   ")
            sys.stderr.flush()

    # --- phases --------------------------------------------------------------------------

    async def phase_settle(self, pop: Population, rec: Recorder) -> dict[str, Any]:
        st = rec.op("settle")

        async def worker(i: int) -> None:
            await self.op_settle(pop, st)

        async def scheduled(i: int, due: float) -> None:
            await self.op_settle(pop, st, need_helper=i % 2 == 0, scheduled=due)

        if self.cfg.rate:
            elapsed = await self.open_loop("settle", scheduled, st, self.cfg.duration_s, self.cfg.rate)
        else:
            elapsed = await self.closed_loop("settle", worker, st, self.cfg.duration_s)
        self._eol()
        return st.summary(elapsed)

    async def phase_gateway(self, pop: Population, rec: Recorder) -> dict[str, Any]:
        """2207 as HTTP JSON through the gateway (the hospitals' path), closed loop like the settle phase."""
        st = rec.op("gateway")
        url = f"http://{self.addresses['gateway']}{gateway.CALL_PATH}"
        connector = aiohttp.TCPConnector(limit=self.cfg.concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as s:

            async def worker(i: int) -> None:
                await self.op_gateway(pop, s, url, st)

            elapsed = await self.closed_loop("gateway", worker, st, self.cfg.duration_s)
        self._eol()
        return st.summary(elapsed)

    async def phase_transfer(self, pop: Population, rec: Recorder) -> dict[str, Any]:
        st = rec.op("transfer")
        pairs = pop.senders
        c = self.cfg.concurrency
        cursor = [w for w in range(c)]

        async def worker(w: int) -> None:
            if not pairs:
                await asyncio.sleep(0.01)
                return
            # Each worker owns its senders (one unaccepted transfer per sender at a time).
            pair = pairs[cursor[w] % len(pairs)]
            cursor[w] += c
            await self.op_transfer(pair, st, "t")

        elapsed = await self.closed_loop("transfer", worker, st, min(self.cfg.duration_s, 8.0))
        self._eol()
        return st.summary(elapsed)

    async def phase_mixed(self, pop: Population, rec: Recorder) -> dict[str, Any]:
        weights = {}
        for item in self.cfg.mix.split(","):
            k, _, v = item.partition("=")
            weights[k.strip()] = int(v)
        names = list(weights)
        sts = {n: rec.op(f"mixed.{n}") for n in names}
        all_st = OpStats("mixed")
        c = self.cfg.concurrency

        async def worker(w: int) -> None:
            kind = self.rng.choices(names, weights=[weights[n] for n in names])[0]
            st = sts[kind]
            before = st.count
            if kind == "settle":
                await self.op_settle(pop, st)
            elif kind == "presettle":
                await self.op_presettle(pop, st)
            elif kind == "lookup":
                await self.op_lookup(pop, st)
            elif kind == "reverse":
                await self.op_reverse(pop, st)
            elif kind == "replay":
                await self.op_replay(pop, st)
            elif kind == "transfer" and pop.senders:
                # Senders of the mixed phase are disjoint per worker as well.
                await self.op_transfer(pop.senders[(w + c * self.rng.randrange(1, 1000)) % len(pop.senders)],
                                       st, "m")
            if st.count > before:
                all_st.record(st.latencies_ms[-1], LAST_CODE.get())

        elapsed = await self.closed_loop("mixed", worker, all_st, self.cfg.duration_s)
        self._eol()
        return {"all": all_st.summary(elapsed), **{n: sts[n].summary(elapsed) for n in names}}

    def _eol(self) -> None:
        if not self.cfg.quiet:
            sys.stderr.write("\n")

    # --- baselines -----------------------------------------------------------------------

    async def echo_baseline(self, address: str, duration_s: float) -> dict[str, Any]:
        chans = [self._chan(address, secure=False) for _ in range(self.cfg.channels)]
        calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
            ch.unary_unary("/medaid.bench.Echo/Echo") for ch in chans]
        st = OpStats("echo")
        payload = b"x" * 200

        async def worker(w: int) -> None:
            t0 = time.perf_counter()
            await calls[w % len(calls)](payload, timeout=DEADLINE_S)
            st.record((time.perf_counter() - t0) * 1000)

        elapsed = await self.closed_loop("echo", worker, st, duration_s)
        self._eol()
        return st.summary(elapsed)

    async def redis_baseline(self, duration_s: float) -> dict[str, Any]:
        client = (redis_client(self.redis_url, self.cfg.concurrency) if is_cluster_url(self.redis_url)
                  else aioredis.Redis.from_url(self.redis_url, max_connections=self.cfg.concurrency))
        script = client.register_script(
            "local b = tonumber(redis.call('HGET', KEYS[1], 'bal') or '0') "
            "if b < tonumber(ARGV[1]) then return -1 end "
            "return redis.call('HINCRBY', KEYS[1], 'bal', -ARGV[1])")
        for i in range(self.cfg.concurrency):
            await client.hset(f"bench:{{lua:{i}}}", "bal", 10**12)
        st = OpStats("redis_lua")

        async def worker(w: int) -> None:
            t0 = time.perf_counter()
            await script(keys=[f"bench:{{lua:{w}}}"], args=[1])
            st.record((time.perf_counter() - t0) * 1000)

        elapsed = await self.closed_loop("redis", worker, st, duration_s)
        self._eol()
        for i in range(self.cfg.concurrency):
            await client.delete(f"bench:{{lua:{i}}}")
        await client.aclose()
        return st.summary(elapsed)


async def run_bench(cfg: Config, addresses: dict[str, str], redis_url: str, echo_address: str,
                    tls: TlsConfig | None = None, pids: dict[str, int] | None = None) -> dict[str, Any]:
    """`pids`: the local processes whose CPU per operation each phase reports (the load generator,
    this process, is always one of them)."""
    h = Harness(cfg, addresses, redis_url, tls)
    meter = CpuMeter({**(pids or {}), "load generator": os.getpid()})

    async def measured(name: str, phase: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        meter.start()
        t0 = time.perf_counter()
        summary = await phase
        summary["cpu"] = meter.stop(int(summary["count"]), time.perf_counter() - t0)
        return summary

    await h.open()
    rec = Recorder()
    report: dict[str, Any] = {
        "cpu_count": os.cpu_count(), "git_sha": git_sha(), "duration_s": cfg.duration_s,
        "config": {"targets": addresses, "concurrency": cfg.concurrency, "rate": cfg.rate or None,
                   "mix": cfg.mix, "seed": cfg.seed, "population": cfg.population,
                   "provinces": list(cfg.provinces), "channels": cfg.channels, "phases": list(cfg.phases)},
    }
    try:
        t0 = time.perf_counter()
        pop = await h.seed_population()
        report["seed_s"] = round(time.perf_counter() - t0, 2)
        report["echo"] = await measured("echo", h.echo_baseline(echo_address, min(cfg.duration_s, 5.0)))
        report["redis_lua"] = await h.redis_baseline(min(cfg.duration_s, 3.0))
        if "settle" in cfg.phases:
            report["settle"] = await measured("settle", h.phase_settle(pop, rec))
            if cfg.plot:
                report["plot"] = str(plot.latency_chart(rec.op("settle").ok_latencies_ms, cfg.plot))
        if "gateway" in cfg.phases and "gateway" in addresses:
            report["gateway"] = await measured("gateway", h.phase_gateway(pop, rec))
        if "transfer" in cfg.phases:
            report["transfer"] = await measured("transfer", h.phase_transfer(pop, rec))
        if "mixed" in cfg.phases:
            meter.start()
            t0 = time.perf_counter()
            report["mixed"] = await h.phase_mixed(pop, rec)
            report["mixed"]["all"]["cpu"] = meter.stop(int(report["mixed"]["all"]["count"]), time.perf_counter() - t0)
    finally:
        await h.close()
    sync = sync_client(redis_url)  # single Redis or every master of a cluster
    try:
        verdict = money.check(sync, expected_credits_fen=pop.credited_fen, expected_settled_fen=h.settled_fen)
    finally:
        sync.close()
    report["money"] = {**verdict.as_dict(), "replay_hits": h.replay_hits, "replay_mismatches": h.replay_mismatches}
    if h.replay_mismatches:
        report["money"]["conserved"] = False
    echo_rps = float(report["echo"]["rps"]) or 1.0
    settle_rps = float(report.get("settle", {}).get("rps", 0.0))
    report["ratio_settle_to_echo"] = round(settle_rps / echo_rps, 3)
    if "gateway" in report:
        report["ratio_gateway_to_echo"] = round(float(report["gateway"]["rps"]) / echo_rps, 3)
    return report
