"""`python -m medaid.bench.reconcile`: what a large hospital's reconciliation costs everyone else.

Against a running topology (`make up`, `--target` its state file): seeds the harness's population,
settles `--settlements` bills at one institution through the router, then measures

* that day's 3201 and 3202 through the router (seconds, `--repeat` times each);
* 2207s of other institutions at `--rate` through the router for `--duration` seconds, alone and
  then beside back-to-back 3201s of that day (p50 / p99 / max ms, timed from their scheduled send);
* with `--gateway-rows N` (0 skips it), the same through the JSON gateway beside back-to-back 3202s
  whose detail is an uploaded (9101) file of N rows the platform does not hold: every row, and every
  settlement of the day, is answered as a mismatch, the largest answer a 3202 can have.

Prints one JSON report (docs/load-testing.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import io
import json
import random
import sys
import time
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from medaid.bench import gateway
from medaid.bench.model import Config, Population
from medaid.bench.options import at_least_one, failed_pct, not_negative, seconds, send_rate
from medaid.bench.population import REGIONS, Msgids
from medaid.bench.run import Harness, code_reason
from medaid.bench.stats import OpStats, failed_beyond
from medaid.common.clock import SHANGHAI
from medaid.common.v1 import common_pb2 as cpb
from medaid.router.v1 import router_pb2 as pb

DEADLINE_S = 120.0


# (status, reason) of one call, as OpStats records it: "OK", a refusal or a failure (run.code_reason).
Outcome = tuple[str, str]


async def _rpc(call: Awaitable[Any]) -> Outcome:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return code_reason(exc)
    return "OK", ""


async def _beside(rate: float, duration_s: float, one: Callable[[], Awaitable[Outcome]],
                  background: Callable[[], Awaitable[Outcome]] | None) -> tuple[dict[str, Any], OpStats]:
    """`one()` fired at `rate` for `duration_s` (open loop, each timed from its scheduled send), while
    `background()` runs back to back: the summary of the `one()`s (OpStats: every attempt counted with
    its status and reason, latencies and rates of the completed ones), and the background's runs."""
    st, runs = OpStats("2207"), OpStats("background")
    t_start = time.perf_counter()
    stop = t_start + duration_s

    async def timed(scheduled: float) -> None:
        outcome = await one()
        st.record((time.perf_counter() - scheduled) * 1000, *outcome)

    async def load() -> None:
        tasks = []
        n = 0
        while (scheduled := t_start + n / rate) < stop:
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            tasks.append(asyncio.ensure_future(timed(scheduled)))
            n += 1
        await asyncio.gather(*tasks)

    async def again() -> None:
        assert background is not None
        while time.perf_counter() < stop:
            t = time.perf_counter()
            outcome = await background()
            runs.record((time.perf_counter() - t) * 1000, *outcome)

    await asyncio.gather(load(), *([again()] if background is not None else []))
    return st.summary(time.perf_counter() - t_start), runs


def _runs(infno: str, runs: OpStats) -> dict[str, Any]:
    """The background's completed runs, the seconds each took (`3201_s`), and its attempts
    (`3201`: count, failed, refused, codes, reasons)."""
    summary = runs.summary(1.0)
    return {f"{infno}_s": [round(ms / 1000, 2) for ms in runs.ok_latencies_ms],
            infno: {k: summary[k] for k in ("count", "completed", "failed", "refused", "codes", "reasons")}}


class Reconciliation:
    def __init__(self, h: Harness, pop: Population, msgids: Msgids, rng: random.Random, run: int) -> None:
        self.h, self.pop, self.msgids, self.rng = h, pop, msgids, rng
        # Institutions of this run alone (a topology keeps earlier runs' settlements): the hospital
        # that reconciles its day, and the one whose 2207s are timed beside it.
        self.hospital = pb.Institution(fixmedins_code=f"H13{900_000_000 + run % 100_000_000:09d}",
                                       mdtrtarea_admvs="130100")
        self.others = pb.Institution(fixmedins_code=f"H13{800_000_000 + run % 100_000_000:09d}",
                                     mdtrtarea_admvs="130100")
        self.rows: list[pb.DetailRow] = []
        self.day = ""

    def _settle_req(self, inst: pb.Institution) -> pb.SettleRequest:
        p = self.rng.choice(self.pop.people)
        return pb.SettleRequest(msgid=self.msgids.next_for(inst), institution=inst, input=pb.SettleInput(
            psn_no=p.pid, insuplc_admdvs=REGIONS[p.province][0], psn_part_amt_fen=self.rng.randrange(100, 2_000),
            acct_used_flag="1", category=cpb.CATEGORY_OUTPATIENT, insutype="310", med_type="11"))

    async def settle_day(self, n: int, concurrency: int = 64) -> float:
        """`n` settlements at the hospital; the seconds it took."""
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                s = (await self.h.router().Settle(self._settle_req(self.hospital), timeout=DEADLINE_S)).setlinfo
                self.rows.append(pb.DetailRow(setl_id=s.setl_id, mdtrt_id=s.mdtrt_id, psn_no=s.psn_no,
                                              medfee_sumamt_fen=s.medfee_sumamt_fen, acct_pay_fen=s.acct_pay_fen))
                if not self.day:  # the Beijing date the settlements are dated (the topology's clock)
                    self.day = dt.datetime.fromtimestamp(s.setl_time_unix_ms / 1000, SHANGHAI).date().isoformat()

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return round(time.perf_counter() - t, 1)

    def _statement(self) -> pb.Statement:
        return pb.Statement(stmt_begndate=self.day, stmt_enddate=self.day)

    async def totals(self) -> pb.ReconcileTotalsResponse:
        return await self.h.router().ReconcileTotals(pb.ReconcileTotalsRequest(
            msgid=self.msgids.next_for(self.hospital), institution=self.hospital, statement=self._statement()),
            timeout=DEADLINE_S)

    async def details(self) -> pb.ReconcileDetailsResponse:
        return await self.h.router().ReconcileDetails(pb.ReconcileDetailsRequest(
            msgid=self.msgids.next_for(self.hospital), institution=self.hospital, statement=self._statement(),
            rows=self.rows), timeout=DEADLINE_S)

    async def other_2207(self) -> Outcome:
        return await _rpc(self.h.router().Settle(self._settle_req(self.others), timeout=DEADLINE_S))

    async def totals_run(self) -> Outcome:
        return await _rpc(self.totals())


def _envelope(infno: str, msgid: str, inst: pb.Institution, inp: dict[str, Any]) -> dict[str, Any]:
    """A message of `inst` in the national envelope, as envelope_2207 writes one."""
    return {**gateway.envelope_2207(msgid, inst.fixmedins_code, inst.mdtrtarea_admvs, "", "", 0),
            "infno": infno, "opter_name": "对账员", "input": inp}


async def _gateway_part(r: Reconciliation, url: str, rows: int, rate: float, duration_s: float) -> dict[str, Any]:
    """2207s through the gateway, alone and beside back-to-back 3202s of a `rows`-row uploaded detail."""
    code = r.hospital.fixmedins_code
    lines = "\n".join(f"{code}{r.msgids.next_for(r.hospital)[12:]}\tMZ{i}\t\t128.50\t0.00\t100.00\t0"
                      for i in range(rows))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("detail.txt", lines)
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        async def call(body: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
            status, reason, raw = await gateway.post(s, url, body)
            return status, reason, (json.loads(raw) if status == "OK" else {})

        status, reason, up = await call(_envelope("9101", r.msgids.next_for(r.hospital), r.hospital, {"fsUploadIn": {
            "in": base64.b64encode(buf.getvalue()).decode(), "filename": "detail.zip"}}))
        if status != "OK":
            raise RuntimeError(f"9101 of the detail file: {status} {reason}")
        no = up["output"]["file_qury_no"]
        mismatches: list[int] = []

        async def detail_3202() -> Outcome:
            status, reason, answer = await call(_envelope("3202", r.msgids.next_for(r.hospital), r.hospital, {"data": {
                "stmt_begndate": r.day, "stmt_enddate": r.day, "setl_optins": "", "medfee_sumamt": "0.00",
                "fund_pay_sumamt": "0.00", "acct_pay": "0.00", "fixmedins_setl_cnt": rows, "file_qury_no": no,
                "refd_setl_flag": "1"}}))
            if status == "OK":
                mismatches.append(len(answer["output"]["detail"]))
            return status, reason

        async def other() -> Outcome:
            p = r.rng.choice(r.pop.people)
            return (await call(gateway.envelope_2207(r.msgids.next_for(r.others), r.others.fixmedins_code,
                                             r.others.mdtrtarea_admvs, p.pid, REGIONS[p.province][0], 100)))[:2]

        alone, _ = await _beside(rate, duration_s, other, None)
        beside, runs = await _beside(rate, duration_s, other, detail_3202)
    return {"rows": rows, "rate": rate, "alone": alone, "beside_3202": beside, **_runs("3202", runs),
            "3202_mismatches": mismatches[:1]}


async def measure(target: dict[str, Any], settlements: int, rate: float, duration_s: float, repeat: int,
                  gateway_rows: int, seed: int, max_failed_pct: float = Config.max_failed_pct,
                  population: int = Config.population) -> dict[str, Any]:
    cfg = Config(population=population, seed=seed, quiet=True)
    h = Harness(cfg, target["addresses"], target["redis_url"])
    run = h.count_run()  # people and msgids of their own, as `make bench --target` runs have
    await h.open()
    try:
        r = Reconciliation(h, await h.seed_population(), Msgids(seed, run), random.Random(seed), run)
        report: dict[str, Any] = {"settlements": settlements, "settle_s": await r.settle_day(settlements), "day": r.day}
        t3201, t3202 = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            totals = await r.totals()
            t3201.append(round(time.perf_counter() - t, 3))
            t = time.perf_counter()
            details = await r.details()
            t3202.append(round(time.perf_counter() - t, 3))
        report["router"] = {"3201_s": t3201, "3201_count": totals.platform.fixmedins_setl_cnt, "3202_s": t3202,
                            "3202_rslt": details.stmt_rslt, "3202_mismatches": len(details.mismatches)}
        alone, _ = await _beside(rate, duration_s, r.other_2207, None)
        beside, runs = await _beside(rate, duration_s, r.other_2207, r.totals_run)
        report["router_2207"] = {"rate": rate, "alone": alone, "beside_3201": beside, **_runs("3201", runs)}
        if gateway_rows:
            url = f"http://{target['addresses']['gateway']}{gateway.CALL_PATH}"
            report["gateway_2207"] = await _gateway_part(r, url, gateway_rows, rate / 2, duration_s)
        report["validity"] = failed_beyond(
            [(f"{part}.{row}", report[part][row]) for part, rows in (
                ("router_2207", ("alone", "beside_3201", "3201")), ("gateway_2207", ("alone", "beside_3202", "3202")))
             if part in report for row in rows], max_failed_pct)
        return report
    finally:
        await h.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medaid.bench.reconcile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="build/run/topology.json", help="state file written by `make up`")
    p.add_argument("--settlements", type=at_least_one, default=20_000, help="the reconciling hospital's day")
    p.add_argument("--rate", type=send_rate, default=200.0,
                   help="other institutions' 2207s per second through the router (half that through the gateway)")
    p.add_argument("--duration", type=seconds, default=10.0, help="seconds each latency measurement lasts")
    p.add_argument("--repeat", type=at_least_one, default=3, help="3201s and 3202s timed on their own")
    p.add_argument("--gateway-rows", type=not_negative, default=50_000,
                   help="rows of the gateway's 3202 detail file (0: skip)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--population", type=at_least_one, default=Config.population,
                   help="insured people seeded, as `make bench --population` (default %(default)s)")
    p.add_argument("--max-failed-pct", type=failed_pct, default=Config.max_failed_pct,
                   help="exit 4 when the 2207s or reconciliations of a measurement fail (refusals excluded) "
                        "beyond this %% of their attempts (default %(default)s)")
    a = p.parse_args(argv)
    report = asyncio.run(measure(json.loads(Path(a.target).read_text()), a.settlements, a.rate, a.duration,
                                 a.repeat, a.gateway_rows, a.seed, a.max_failed_pct, a.population))
    json.dump(report, sys.stdout, ensure_ascii=False, indent=2)
    print()
    return 0 if report["validity"]["valid"] else 4  # no measurement, as `make bench` exits


if __name__ == "__main__":
    sys.exit(main())
