"""Load harness: seed a population, drive phases (settle, transfer, mixed), report like ghz, and
give the money verdict. Baselines in the same run (baselines.py): a gRPC echo and a raw Redis Lua
debit loop."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
import grpc

from medaid.bench import baselines, gateway, money, plot
from medaid.bench.cpu import CpuMeter, ratio_by_busiest
from medaid.bench.model import Config, Person, Population, mix_weights
from medaid.bench.population import DEADLINE_S, FACE, REDIS_TIMEOUT_S, REGIONS, TRANSFER_MAX_FEN, Seeding
from medaid.bench.report import git_sha
from medaid.bench.stats import LAST_OUTCOME, OpStats, Recorder, validity
from medaid.common.errors import NO_ANSWER_CODES, error_info
from medaid.common.redis_client import sync_client
from medaid.common.tls import TlsConfig
from medaid.common.v1 import common_pb2 as cpb
from medaid.router.v1 import router_pb2 as pb
from medaid.wallet.v1 import wallet_pb2 as wpb

# Answers after which a call may or may not have taken effect (the deadline passed, the answer was
# lost, a service stopped waiting for the one behind it): the harness resends such a 2207 or 2208 with
# its msgid once the phases are done (Harness.resend_unknown), as a hospital does, and counts what it did.
UNKNOWN_OUTCOME = frozenset({c.name for c in NO_ANSWER_CODES} | {"INTERNAL", "UNKNOWN"})
RESEND_ROUNDS = 5


def code_reason(exc: grpc.aio.AioRpcError) -> tuple[str, str]:
    """(status, reason) of a failed call, as OpStats records them (the ErrorInfo reason, if any)."""
    info = error_info(exc)
    return exc.code().name, (info.reason if info is not None else "")


class Harness(Seeding):
    """Drives a seeded topology: the operations, the closed and open loops, the phases, the baselines."""

    def __init__(self, cfg: Config, addresses: dict[str, str], redis_url: str, tls: TlsConfig | None = None,
                 institution_tokens: dict[str, str] | None = None) -> None:
        super().__init__(cfg, addresses, redis_url, tls)
        # fixmedins_code -> bearer token (a topology with mTLS + authorization): the gateway phase then
        # settles as these institutions, one of each province, with their token, as a hospital does.
        self.institution_tokens = dict(institution_tokens or {})
        self.settled_fen = 0  # what settlement answers say left accounts/wallets (net of reversals)
        self.settlements: list[tuple[pb.SettleRequest, pb.SetlInfo]] = []
        self.replay_hits = 0
        self.replay_mismatches = 0
        # A sender has one unaccepted transfer at a time (SPEC): the harness, like a wallet app, never
        # starts a sender's next transfer before the last one is accepted, even when two workers'
        # picks land on the same sender (a small population).
        self._sender_busy: dict[str, asyncio.Lock] = {}
        # Calls whose outcome the harness could not know (UNKNOWN_OUTCOME): a 2207 over gRPC, a 2207
        # through the gateway (url, body, headers), a 2208 and the fen it gives back.
        self.unknown: list[tuple[str, Any]] = []

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
            resp = await self.router().Settle(req, timeout=self.cfg.call_deadline_s)
        except grpc.aio.AioRpcError as exc:
            st.record((time.perf_counter() - t0) * 1000, *code_reason(exc))
            if exc.code().name in UNKNOWN_OUTCOME:
                self.unknown.append(("settle", req))
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
                                                              input=req.input), timeout=self.cfg.call_deadline_s)
            st.record((time.perf_counter() - t0) * 1000)
        except grpc.aio.AioRpcError as exc:
            st.record((time.perf_counter() - t0) * 1000, *code_reason(exc))

    async def op_lookup(self, pop: Population, st: OpStats) -> None:
        p = self.rng.choice(pop.people)
        msgid, inst = self.msgids.next(p.province)
        t0 = time.perf_counter()
        try:
            await self.router().QueryPerson(pb.QueryPersonRequest(msgid=msgid, institution=inst,
                                                                  mdtrt_cert_type="02", mdtrt_cert_no=p.pid),
                                            timeout=self.cfg.call_deadline_s)
            st.record((time.perf_counter() - t0) * 1000)
        except grpc.aio.AioRpcError as exc:
            st.record((time.perf_counter() - t0) * 1000, *code_reason(exc))

    async def op_reverse(self, st: OpStats) -> None:
        """A 2208 of one of this run's settlements (there must be one: phase_mixed sees to it)."""
        req, s = self.settlements.pop(self.rng.randrange(len(self.settlements)))
        reversal = pb.ReverseSettlementRequest(
            msgid=self.msgids.next_for(req.institution), institution=req.institution, setl_id=s.setl_id,
            psn_no=s.psn_no, insuplc_admdvs=req.input.insuplc_admdvs)
        fen = s.acct_pay_fen + s.wallet_pay_fen + s.acct_mulaid_pay_fen
        t0 = time.perf_counter()
        try:
            await self.router().ReverseSettlement(reversal, timeout=self.cfg.call_deadline_s)
            st.record((time.perf_counter() - t0) * 1000)
            self.settled_fen -= fen
        except grpc.aio.AioRpcError as exc:
            st.record((time.perf_counter() - t0) * 1000, *code_reason(exc))
            if exc.code().name in UNKNOWN_OUTCOME:
                self.unknown.append(("reverse", (reversal, fen)))  # reversed or not: resend_unknown says
            else:
                self.settlements.append((req, s))

    async def op_replay(self, st: OpStats) -> None:
        """One of this run's 2207s again, its msgid and all (there must be one: phase_mixed sees to it)."""
        req, first = self.settlements[self.rng.randrange(len(self.settlements))]
        t0 = time.perf_counter()
        try:
            resp = await self.router().Settle(req, timeout=self.cfg.call_deadline_s)
        except grpc.aio.AioRpcError as exc:
            st.record((time.perf_counter() - t0) * 1000, *code_reason(exc))
            return
        st.record((time.perf_counter() - t0) * 1000)
        if resp.setlinfo == first:
            self.replay_hits += 1
        else:
            self.replay_mismatches += 1

    async def op_gateway(self, pop: Population, session: aiohttp.ClientSession, url: str, st: OpStats) -> None:
        req = self._settle_request(pop, self.rng.random() < 0.5)
        i, msgid, headers = req.institution, req.msgid, {}
        token = self._institution_token(req.input.insuplc_admdvs[:2])
        if token is not None:
            i = pb.Institution(fixmedins_code=token[0], mdtrtarea_admvs=i.mdtrtarea_admvs)
            msgid, headers = self.msgids.next_for(i), {"Authorization": f"Bearer {token[1]}"}
        body = gateway.envelope_2207(msgid, i.fixmedins_code, i.mdtrtarea_admvs, req.input.psn_no,
                                     req.input.insuplc_admdvs, req.input.psn_part_amt_fen)
        t0 = time.perf_counter()
        status, why, raw = await gateway.post(session, url, body, headers)
        st.record((time.perf_counter() - t0) * 1000, status, why)
        if status == "OK":
            self.settled_fen += gateway.read_answer(raw)[2]
        elif gateway.unknown_outcome(status):
            self.unknown.append(("gateway", (url, body, headers)))

    def _institution_token(self, province: str) -> tuple[str, str] | None:
        """(fixmedins_code, token) of an institution of `province` holding a token, else of any; None
        when the bench holds no token (a topology without authorization)."""
        codes = [c for c in self.institution_tokens if c[1:3] == province] or list(self.institution_tokens)
        return (codes[0], self.institution_tokens[codes[0]]) if codes else None

    async def op_transfer(self, pair: tuple[Person, Person], st: OpStats, tag: str) -> None:
        sender, recipient = pair
        busy = self._sender_busy.setdefault(sender.pid, asyncio.Lock())
        async with busy:
            await self._transfer(sender, recipient, st, tag)

    async def _transfer(self, sender: Person, recipient: Person, st: OpStats, tag: str) -> None:
        self.msgids.n += 1
        tid = f"bench-{tag}-{self.cfg.seed}-{self.run}-{self.msgids.n}"
        t0 = time.perf_counter()  # after the sender is free: the wait is the harness's, not the system's
        try:
            await self.wallet.CreateTransfer(wpb.CreateTransferRequest(
                request_id=tid, sender_id_number=sender.pid, sender_province=sender.province,
                recipient_id_number=recipient.pid, relation=cpb.RELATION_PARENT,
                amount_fen=self.rng.randrange(100, TRANSFER_MAX_FEN), verification=FACE),
                timeout=self.cfg.call_deadline_s)
            await self.wallet.AcceptTransfer(wpb.AcceptTransferRequest(
                request_id=f"{tid}-acc", transfer_id=tid, recipient_id_number=recipient.pid),
                timeout=self.cfg.call_deadline_s)
            st.record((time.perf_counter() - t0) * 1000)
        except grpc.aio.AioRpcError as exc:
            st.record((time.perf_counter() - t0) * 1000, *code_reason(exc))

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

    async def phase_settle(self, pop: Population, rec: Recorder, *, rate: float = 0.0,
                           name: str = "settle") -> dict[str, Any]:
        """2207 over gRPC: a closed loop, or an open loop at `rate` a second (else the configured one)."""
        st = rec.op(name)
        rate = rate or self.cfg.rate

        async def worker(i: int) -> None:
            await self.op_settle(pop, st)

        async def scheduled(i: int, due: float) -> None:
            await self.op_settle(pop, st, need_helper=i % 2 == 0, scheduled=due)

        if rate:
            elapsed = await self.open_loop(name, scheduled, st, self.cfg.duration_s, rate)
        else:
            elapsed = await self.closed_loop(name, worker, st, self.cfg.duration_s)
        self._eol()
        return {**st.summary(elapsed), **({"rate": rate} if rate else {})}

    async def phase_gateway(self, pop: Population, rec: Recorder) -> dict[str, Any]:
        """2207 as HTTP JSON through the gateway (the hospitals' path), closed loop like the settle phase."""
        st = rec.op("gateway")
        url = f"http://{self.addresses['gateway']}{gateway.CALL_PATH}"
        connector = aiohttp.TCPConnector(limit=self.cfg.concurrency)
        timeout = aiohttp.ClientTimeout(total=self.cfg.call_deadline_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:

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
        weights = mix_weights(self.cfg.mix)
        names = list(weights)
        sts = {n: rec.op(f"mixed.{n}") for n in names}
        all_st = OpStats("mixed")
        c = self.cfg.concurrency

        async def worker(w: int) -> None:
            kind = self.rng.choices(names, weights=[weights[n] for n in names])[0]
            if kind in ("reverse", "replay") and not self.settlements:
                # Nothing settled yet (a mixed phase without a settle phase before it): nothing to
                # reverse or resend, so the pick is a 2207, and is counted as one.
                kind = "settle"
            if kind not in sts:
                sts[kind] = rec.op(f"mixed.{kind}")
            st = sts[kind]
            before = st.count
            if kind == "settle":
                await self.op_settle(pop, st)
            elif kind == "presettle":
                await self.op_presettle(pop, st)
            elif kind == "lookup":
                await self.op_lookup(pop, st)
            elif kind == "reverse":
                await self.op_reverse(st)
            elif kind == "replay":
                await self.op_replay(st)
            elif kind == "transfer" and pop.senders:
                # Senders of the mixed phase are disjoint per worker as well.
                await self.op_transfer(pop.senders[(w + c * self.rng.randrange(1, 1000)) % len(pop.senders)],
                                       st, "m")
            if st.count > before:
                all_st.record(st.latencies_ms[-1], *LAST_OUTCOME.get())

        elapsed = await self.closed_loop("mixed", worker, all_st, self.cfg.duration_s)
        self._eol()
        return {"all": all_st.summary(elapsed), **{n: st.summary(elapsed) for n, st in sts.items()}}

    def _eol(self) -> None:
        if not self.cfg.quiet:
            sys.stderr.write("\n")

    # --- unknown outcomes -----------------------------------------------------------------

    async def resend_unknown(self) -> dict[str, int]:
        """Resend each call whose outcome the harness could not know (`self.unknown`) with its msgid,
        as a hospital does, so its tally holds what they did: a 2207 answers its settlement (the first
        attempt's, or this one's), a 2208 its reversal. Rounds while some are still answered
        UNKNOWN_OUTCOME and the round before resolved some (nothing answering: one round). Not measured.
        {"resent", "settled" (2207s and 2208s that took effect), "unresolved"}."""
        pending, self.unknown = self.unknown, []
        out = {"resent": len(pending), "settled": 0, "unresolved": 0}
        if not pending:
            return out
        sem = asyncio.Semaphore(64)
        timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(kind: str, call: Any) -> bool:
                """True once the answer is known (and counted), False while it is not."""
                async with sem:
                    if kind == "gateway":
                        url, body, headers = call
                        status, _, raw = await gateway.post(session, url, body, headers)
                        if status == "OK":
                            self.settled_fen += gateway.read_answer(raw)[2]
                            out["settled"] += 1
                        return not gateway.unknown_outcome(status)
                    try:
                        if kind == "settle":
                            s = (await self.router().Settle(call, timeout=DEADLINE_S)).setlinfo
                            self.settled_fen += s.acct_pay_fen + s.wallet_pay_fen + s.acct_mulaid_pay_fen
                        else:
                            reversal, fen = call
                            await self.router().ReverseSettlement(reversal, timeout=DEADLINE_S)
                            self.settled_fen -= fen
                    except grpc.aio.AioRpcError as exc:
                        return exc.code().name not in UNKNOWN_OUTCOME
                    out["settled"] += 1
                    return True

            for attempt in range(RESEND_ROUNDS):
                known = await asyncio.gather(*(one(kind, call) for kind, call in pending))
                still = [item for item, done in zip(pending, known, strict=True) if not done]
                if len(still) == len(pending) or not still:
                    pending = still
                    break
                pending = still
                await asyncio.sleep(0.2 * (attempt + 1))
        out["unresolved"] = len(pending)
        return out


def half_rate(settle_rps: float) -> float:
    """The `half` phase's open-loop rate: half the settle phase's, to 0.1/s, but never rounded down
    to 0 (which would run the phase closed-loop)."""
    return round(settle_rps / 2, 1) or settle_rps / 2


async def run_bench(cfg: Config, addresses: dict[str, str], redis_url: str, echo_address: str,
                    tls: TlsConfig | None = None, pids: dict[str, int] | None = None,
                    institution_tokens: dict[str, str] | None = None) -> dict[str, Any]:
    """`pids`: the local processes whose CPU per operation each phase reports (the load generator,
    this process, is always one of them). `institution_tokens`: the bearer tokens the gateway phase
    presents (fixmedins_code -> token), where the gateway requires an institution's credential."""
    h = Harness(cfg, addresses, redis_url, tls, institution_tokens)
    meter = CpuMeter({**(pids or {}), "load generator": os.getpid()})

    async def measured(name: str, phase: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        meter.start()
        t0 = time.perf_counter()
        summary = await phase
        summary["cpu"] = meter.stop(int(summary["completed"]), int(summary["count"]), time.perf_counter() - t0)
        return summary

    await h.open()
    rec = Recorder()
    report: dict[str, Any] = {
        "cpu_count": os.cpu_count(), "git_sha": git_sha(), "duration_s": cfg.duration_s,
        "config": {"targets": addresses, "concurrency": cfg.concurrency, "rate": cfg.rate or None,
                   "mix": cfg.mix, "seed": cfg.seed, "population": cfg.population,
                   "provinces": list(cfg.provinces), "channels": cfg.channels, "phases": list(cfg.phases)},
    }
    # A topology may have served runs before (`--target`): this run is counted, its people and msgids
    # are new, and the harness's tallies are compared with what the ledgers gained during it.
    h.count_run()
    sync = sync_client(redis_url, REDIS_TIMEOUT_S)  # single Redis or every master of a cluster
    try:
        before = money.check(sync)
    finally:
        sync.close()
    report["config"]["run"] = h.run
    try:
        t0 = time.perf_counter()
        pop = await h.seed_population()
        report["seed_s"] = round(time.perf_counter() - t0, 2)
        report["echo"] = await measured("echo", baselines.echo(h, echo_address, min(cfg.duration_s, 5.0)))
        report["redis_lua"] = await baselines.redis_lua(h, min(cfg.duration_s, 3.0))
        if "settle" in cfg.phases:
            report["settle"] = await measured("settle", h.phase_settle(pop, rec))
            if cfg.plot:
                report["plot"] = str(plot.latency_chart(rec.op("settle").ok_latencies_ms, cfg.plot))
            if "half" in cfg.phases and not cfg.rate and report["settle"]["rps"]:
                # Half the capacity just measured, open loop: the latency a system running at half
                # its capacity shows, each request timed from its scheduled send.
                half = half_rate(float(report["settle"]["rps"]))
                report["settle_half_load"] = await measured("half", h.phase_settle(pop, rec, rate=half,
                                                                                   name="settle_half_load"))
        if "gateway" in cfg.phases and "gateway" in addresses:
            report["gateway"] = await measured("gateway", h.phase_gateway(pop, rec))
        if "transfer" in cfg.phases:
            report["transfer"] = await measured("transfer", h.phase_transfer(pop, rec))
        if "mixed" in cfg.phases:
            meter.start()
            t0 = time.perf_counter()
            report["mixed"] = await h.phase_mixed(pop, rec)
            every = report["mixed"]["all"]
            every["cpu"] = meter.stop(int(every["completed"]), int(every["count"]), time.perf_counter() - t0)
        # Before the verdict: what the calls answered UNAVAILABLE, DEADLINE_EXCEEDED, … did.
        unknown = await h.resend_unknown()
    finally:
        await h.close()
    sync = sync_client(redis_url, REDIS_TIMEOUT_S)  # single Redis or every master of a cluster
    try:
        verdict = money.check(sync, expected_credits_fen=pop.credited_fen, expected_settled_fen=h.settled_fen,
                              before=before)
    finally:
        sync.close()
    report["money"] = {**verdict.as_dict(), "replay_hits": h.replay_hits, "replay_mismatches": h.replay_mismatches,
                       "unknown_outcomes": unknown}
    if h.replay_mismatches:
        report["money"]["conserved"] = False
    report["validity"] = validity(report, cfg.max_failed_pct)
    echo_rps = float(report["echo"]["rps"]) or 1.0
    # Like the gateway's: no ratio for a phase that did not run, nor for an open loop (`--rate`),
    # whose rate is the one asked for, not a capacity.
    if "settle" in report and not cfg.rate:
        report["ratio_settle_to_echo"] = round(float(report["settle"]["rps"]) / echo_rps, 3)
    if "settle" in report and (bound := ratio_by_busiest(report["echo"].get("cpu", {}),
                                                           report["settle"].get("cpu", {}))) is not None:
        report["ratio_settle_to_echo_by_busiest"] = bound
    if "gateway" in report:
        report["ratio_gateway_to_echo"] = round(float(report["gateway"]["rps"]) / echo_rps, 3)
    return report
