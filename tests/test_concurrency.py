"""Hundreds of concurrent settlements through gRPC against a few shared helpers (SPEC §4, §7).

100 members (residents and employees with small own balances) are each bound to 2-3 of 10 helpers;
the helpers also settle bills of their own. ~500 settlements run from 48 client threads, with some
request ids sent twice at the same moment. Bills far exceed what the helpers hold, so helpers run dry
mid-run. Afterwards: no negative balance, conservation to the fen, every ledger replays to its balance,
every settlement adds up, one helper at most per settlement, and duplicate ids had one effect.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from medaid.common.scripts import lua_source
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry import policy as policy_mod
from medaid.registry.v1 import registry_pb2 as pb
from support import (
    FACE,
    RESIDENT,
    balance,
    bind,
    credit,
    enroll,
    new_id,
    reason,
    rid,
    settle_request,
    total_balances,
)

N_HELPERS, N_MEMBERS, N_SETTLEMENTS, N_DUPLICATED, THREADS = 10, 100, 520, 60, 48
CATEGORIES = (cpb.CATEGORY_OUTPATIENT, cpb.CATEGORY_INPATIENT, cpb.CATEGORY_PHARMACY)


def _retrying(call: Any, req: Any, stats: Counter) -> Any:
    """A client that honours UNAVAILABLE ('retry with the same request id'); anything else is a failure."""
    for _ in range(20):
        try:
            return call(req, timeout=60)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            stats[f"retry:{reason(exc)}"] += 1
            time.sleep(0.01)
    raise AssertionError(f"{req.request_id} still unavailable after 20 tries")


def test_concurrent_settlements_conserve_money(start_registry, rdb, record_property):
    pol = dataclasses.replace(policy_mod.load(policy_mod.find_policy_file("13")), max_members=40)
    reg = start_registry(policy=pol)
    s = reg.stub
    rng = random.Random(20261122)
    stats: Counter = Counter()

    # --- people, money and bindings (set up concurrently too) ---------------------------------
    helpers = [new_id(birth="19700101") for _ in range(N_HELPERS)]
    members = [new_id(birth="20100101") for _ in range(N_MEMBERS)]
    assert len(set(helpers + members)) == N_HELPERS + N_MEMBERS
    employee_members = set(members[::3])  # a third are employees with a small own account
    credits: dict[str, int] = {h: 15_000 + 5_000 * i for i, h in enumerate(helpers)}
    for m in employee_members:
        credits[m] = rng.choice([0, 200, 800, 1_500, 3_000])
    bound: dict[str, list[str]] = {m: rng.sample(helpers, rng.choice([2, 3])) for m in members}

    def enroll_one(pid: str) -> None:
        itype = cpb.INSURANCE_TYPE_EMPLOYEE if pid in helpers or pid in employee_members else RESIDENT
        s.EnrollPerson(pb.EnrollPersonRequest(request_id=rid("enroll"), id_number=pid, name="并发",
                                              insurance_type=itype, pooling_region="130100"), timeout=30)

    def credit_one(pid: str) -> None:
        if credits[pid]:
            s.CreditAccount(pb.CreditAccountRequest(request_id=rid("credit"), id_number=pid,
                                                    amount_fen=credits[pid], kind=pb.CREDIT_KIND_ADJUSTMENT),
                            timeout=30)

    def bind_one(pair: tuple[str, str]) -> None:
        h, m = pair
        req = pb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=h, member_id_number=m,
                                      relation=cpb.RELATION_CHILD)
        req.member_verification.CopyFrom(FACE)
        s.BindMutualAid(req, timeout=30)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(enroll_one, helpers + members))
        list(pool.map(credit_one, list(credits)))
        list(pool.map(bind_one, [(h, m) for m, hs in bound.items() for h in hs]))
    credited_total = sum(credits.values())
    assert total_balances(rdb) == credited_total
    bindings_of_helper = Counter(h for hs in bound.values() for h in hs)
    assert max(bindings_of_helper.values()) <= pol.max_members

    # --- the settlements ------------------------------------------------------------------------
    requests: list[pb.SettleRequest] = []
    for _ in range(N_SETTLEMENTS):
        patient = rng.choice(helpers) if rng.random() < 0.06 else rng.choice(members)
        requests.append(settle_request(patient, rng.randint(300, 6_000), use_account=rng.random() < 0.92,
                                       category=rng.choice(CATEGORIES), request_id=rid("cc")))
    duplicated = {r.request_id for r in rng.sample(requests, N_DUPLICATED)}
    calls: list[pb.SettleRequest] = []
    for r in requests:
        calls.append(r)
        if r.request_id in duplicated:
            twin = pb.SettleRequest()
            twin.CopyFrom(r)
            calls.append(twin)  # same id, same fields, sent at (nearly) the same moment

    failures: list[str] = []

    def one(req: pb.SettleRequest) -> tuple[str, pb.SettlementResult | None]:
        try:
            return req.request_id, _retrying(s.Settle, req, stats).result
        except grpc.RpcError as exc:
            failures.append(f"{req.request_id}: {exc.code()} {reason(exc)} {exc.details()}")
            return req.request_id, None

    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(one, calls))
    elapsed = time.perf_counter() - started
    assert not failures, failures[:10]

    # --- every answer adds up; duplicates answered alike -------------------------------------------
    by_req = {r.request_id: r for r in requests}
    results: dict[str, pb.SettlementResult] = {}
    for sid, res in outcomes:
        assert res is not None
        if sid in results:
            assert res == results[sid], f"duplicate {sid} answered differently"
            stats["duplicate_answers_equal"] += 1
            continue
        results[sid] = res
    assert set(results) == set(by_req)
    assert stats["duplicate_answers_equal"] == N_DUPLICATED

    helper_paid: dict[str, int] = defaultdict(int)
    for sid, res in results.items():
        req = by_req[sid]
        assert res.settlement_id == sid and res.patient_id_number == req.patient_id_number
        assert res.amount_fen == req.amount_fen
        parts = (res.acct_pay_fen, res.wallet_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen)
        assert min(parts) >= 0 and sum(parts) == res.amount_fen, (sid, parts)
        assert res.wallet_pay_fen == 0  # no wallets in this run
        if not req.use_account:
            assert parts == (0, 0, 0, req.amount_fen)
        if res.mulaid_pay_fen > 0:
            # One helper, bound to this patient, paying everything the own account did not: never pooled.
            assert res.helper_id_number in bound[req.patient_id_number]
            assert res.cash_pay_fen == 0 and res.mulaid_pay_fen == res.amount_fen - res.acct_pay_fen
            assert res.helper_reason == ""
            helper_paid[res.helper_id_number] += res.mulaid_pay_fen
            stats["helper_paid"] += 1
        else:
            assert res.helper_id_number == ""
            if req.use_account and res.cash_pay_fen > 0 and req.patient_id_number in bound:
                assert res.helper_reason in ("HELPER_INSUFFICIENT", "HELPER_ZERO_BALANCE"), (sid, res.helper_reason)
                stats[res.helper_reason] += 1
        if res.acct_pay_fen > 0:
            stats["own_paid"] += 1
    # The run really exhausted helpers (otherwise it tests nothing about all-or-nothing under contention).
    assert stats["HELPER_INSUFFICIENT"] + stats["HELPER_ZERO_BALANCE"] > 20
    assert stats["helper_paid"] > 50

    # --- Redis: no negative balance, ledgers replay, one effect per settlement ---------------------
    accounts: dict[str, dict[str, int]] = {}
    for key in rdb.scan_iter(match="reg:*:acct"):
        h = {k.decode(): int(v) for k, v in rdb.hgetall(key).items()}
        pid = key.decode().split("{p:")[1].split("}")[0]
        accounts[pid] = h
        assert h["bal"] >= 0, (pid, h)
    assert set(accounts) == set(helpers) | employee_members

    spent = sum(r.acct_pay_fen + r.mulaid_pay_fen for r in results.values())
    balances = sum(a["bal"] for a in accounts.values())
    assert balances == total_balances(rdb) == credited_total - spent, (credited_total, spent, balances)

    helper_entries: dict[str, list[str]] = defaultdict(list)  # sid -> helpers that paid it
    for pid, acct in accounts.items():
        ledger = [json.loads(e) for e in rdb.lrange(f"reg:13:{{p:{pid}}}:ledger", 0, -1)]
        running = 0
        for e in ledger:
            running += e["amount"]
            assert e["bal"] == running >= 0, (pid, e)
        assert running == acct["bal"] == acct["credited"] - acct["debited"], (pid, acct)
        assert acct["credited"] == credits[pid]
        own = Counter(e["ref"] for e in ledger if e["kind"] == "SETTLE_OWN")
        assert all(n == 1 for n in own.values()), own.most_common(3)
        for sid in own:
            assert by_req[sid].patient_id_number == pid
        assert sum(-e["amount"] for e in ledger if e["kind"] == "SETTLE_OWN") == sum(
            r.acct_pay_fen for r in results.values() if r.patient_id_number == pid)
        helper_debits = [e for e in ledger if e["kind"] == "SETTLE_HELPER"]
        for e in helper_debits:
            helper_entries[e["ref"]].append(pid)
            assert results[e["ref"]].mulaid_pay_fen == -e["amount"]
            assert results[e["ref"]].helper_id_number == pid
        assert sum(-e["amount"] for e in helper_debits) == helper_paid.get(pid, 0), pid
    assert all(len(v) == 1 for v in helper_entries.values()), "a settlement drew on two helpers or twice"
    assert set(helper_entries) == {sid for sid, r in results.items() if r.mulaid_pay_fen > 0}
    for sid, res in results.items():
        assert rdb.hget(f"reg:13:{{p:{res.patient_id_number}}}:setl:{sid}", "state") == b"SETTLED"

    rate = len(calls) / elapsed
    figures = {
        "calls": len(calls), "unique_settlements": len(results), "duplicate_pairs": N_DUPLICATED,
        "threads": THREADS, "elapsed_s": round(elapsed, 3), "settle_calls_per_s": round(rate, 1),
        "credited_fen": credited_total, "spent_fen": spent, "balances_fen": balances,
        "acct_pay_fen": sum(r.acct_pay_fen for r in results.values()),
        "mulaid_pay_fen": sum(r.mulaid_pay_fen for r in results.values()),
        "cash_pay_fen": sum(r.cash_pay_fen for r in results.values()),
        "helper_paid": stats["helper_paid"], "own_paid": stats["own_paid"],
        "helper_insufficient": stats["HELPER_INSUFFICIENT"], "helper_zero_balance": stats["HELPER_ZERO_BALANCE"],
        "helpers_left_fen": sorted(accounts[h]["bal"] for h in helpers),
        "unavailable_retries": {k: v for k, v in stats.items() if k.startswith("retry:")},
    }
    for k, v in figures.items():
        record_property(k, v)
    print("\nconcurrency figures:", json.dumps(figures, ensure_ascii=False))


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "staged"])
def test_settlement_replans_when_own_balance_moves_under_it(hebei, rdb, atomic):
    """A patient who is also a helper can be charged (as helper) between the reads their own bill was
    planned from and the apply. The atomic path finds the balance it planned from gone (CONFLICT, nothing
    written) and the staged path's own-account step answers SHORT: both read and plan again, and the
    settlement completes with the new balance, never with a stale split."""
    s = hebei.stub
    reg = hebei.registry
    k = reg.k
    patient, helper, kid = enroll(s, birth="19900101"), enroll(s), enroll(s, itype=RESIDENT, birth="20150101")
    credit(s, patient, 3_000)
    credit(s, helper, 50_000)
    bind(s, helper, patient)
    bind(s, patient, kid)  # the patient is also the kid's helper
    charge = lua_source("medaid.registry", "settle_charge")
    raced: list[str] = []
    real_plan = reg.engine.planner.plan

    def plan_then_race(*args: Any, **kwargs: Any) -> Any:
        planned = real_plan(*args, **kwargs)
        if len(raced) < 2:
            # The kid's settlement charges the patient (as helper) right after the patient's bill was planned.
            ksid = rid("kid")
            keys = [k.person(patient), k.account(patient), k.ledger(patient), k.applied(patient),
                    k.consumption(patient), k.consumption_index(patient)]
            status, _ = rdb.eval(charge, len(keys), *keys, ksid, 1, reg.clock.now_ms(), f"{ksid}|{patient}", "{}")
            assert status == b"OK"
            raced.append(ksid)
        return planned

    reg.engine.planner.plan = plan_then_race  # type: ignore[method-assign]
    reg.atomic = atomic
    try:
        req = settle_request(patient, 10_000)
        try:
            res = s.Settle(req).result
        except grpc.RpcError as exc:
            own = [e for e in map(json.loads, rdb.lrange(k.ledger(patient), 0, -1)) if e["ref"] == req.request_id]
            raise AssertionError(f"settle failed with {exc.code()} {reason(exc)} although SETTLE_OWN entries "
                                 f"{own} were written") from None
    finally:
        del reg.engine.planner.plan
        reg.atomic = True
    assert len(raced) == 2
    assert (res.acct_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen, res.helper_id_number) == \
        (2_998, 7_002, 0, helper)
    assert (balance(s, patient), balance(s, helper)) == (0, 50_000 - 7_002)
    assert total_balances(rdb) == 53_000 - 2 - 10_000
    own_entries = [e for e in map(json.loads, rdb.lrange(k.ledger(patient), 0, -1)) if e["ref"] == req.request_id]
    assert [e["amount"] for e in own_entries] == [-2_998]  # one own debit, of the final plan
