"""2601 冲正 through the router (real registries, router and Redis in-process): racing another reversal
of the same settlement, whoever reverses first, every other 2601 of that 2207 is answered as
docs/reconciliation.md says, `ALREADY_REVERSED`, never an error that depends on timing; and the
insured place a 2601 names is checked before anything is written."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import redis
from conftest import National, RunningRouter
from medaid.common.v1 import common_pb2 as cpb
from medaid.router.v1 import router_pb2 as pb
from support import balance, bind, credit, enroll, reason, snapshot

HEBEI = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
T = 10.0
_seq = itertools.count(1)


def new_msgid() -> str:
    return f"{HEBEI.fixmedins_code}20261122113000{next(_seq) % 10_000:04d}"


def settled(router: RunningRouter, psn: str, amount: int) -> tuple[str, pb.SetlInfo]:
    mid = new_msgid()
    return mid, router.stub.Settle(pb.SettleRequest(msgid=mid, institution=HEBEI, input=pb.SettleInput(
        psn_no=psn, psn_part_amt_fen=amount, acct_used_flag="1", category=cpb.CATEGORY_OUTPATIENT)),
        timeout=T).setlinfo


def undo_req(psn: str, omsgid: str) -> pb.UndoRequest:
    return pb.UndoRequest(msgid=new_msgid(), institution=HEBEI, psn_no=psn, omsgid=omsgid, oinfno="2207")


def patient_with_helper(national: National) -> tuple[str, str]:
    r13 = national.reg("13")
    patient, helper = enroll(r13), enroll(r13, birth="19500101")
    credit(r13, patient, 10_000)
    credit(r13, helper, 10_000)
    bind(r13, helper, patient, cpb.RELATION_PARENT)
    return patient, helper


def test_a_2601_whose_settlement_a_2208_reverses_meanwhile_answers_already_reversed(
        national: National, start_router: Callable[..., RunningRouter], rdb: redis.Redis):
    router = start_router()
    r13 = national.reg("13")
    patient, helper = patient_with_helper(national)
    omsgid, setl = settled(router, patient, 12_000)
    inner = router.router
    plain = inner._registry_call
    rev_msgid = new_msgid()

    async def racing(province: str, method: str, request: Any, **kw: Any) -> Any:
        answer = await plain(province, method, request, **kw)
        if method == "GetSettlements":  # the 2601 has read the settlement; a 2208 reverses it now
            await inner.reverse(pb.ReverseSettlementRequest(msgid=rev_msgid, institution=HEBEI,
                                                            setl_id=setl.setl_id, psn_no=patient))
        return answer

    inner._registry_call = racing  # type: ignore[method-assign]
    try:
        req = undo_req(patient, omsgid)
        out = router.stub.Undo(req, timeout=T)
    finally:
        inner._registry_call = plain  # type: ignore[method-assign]
    assert (out.outcome, out.setl_id) == ("ALREADY_REVERSED", setl.setl_id)
    assert (balance(r13, patient), balance(r13, helper)) == (10_000, 10_000)  # given back once, by the 2208
    # The 2601 reversed nothing: the index names only the 2208 as the settlement's reversal.
    members = [m.decode() for m in rdb.zrange(f"rtr:{{inst:{HEBEI.fixmedins_code}}}:rev", 0, -1)
               if setl.setl_id in m.decode()] if rdb.exists(f"rtr:{{inst:{HEBEI.fixmedins_code}}}:rev") else []
    assert all(req.msgid not in m for m in members), members
    # Its resend is answered the same.
    assert router.stub.Undo(req, timeout=T) == out


def test_distinct_2601s_of_one_2207_at_once_reverse_it_once_and_all_answer(
        national: National, start_router: Callable[..., RunningRouter]):
    router = start_router()
    r13 = national.reg("13")
    patient, helper = patient_with_helper(national)
    omsgid, setl = settled(router, patient, 12_000)

    def undo(req: pb.UndoRequest) -> str:
        try:
            return router.stub.Undo(req, timeout=T).outcome
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"

    with ThreadPoolExecutor(10) as pool:
        outcomes = sorted(pool.map(undo, [undo_req(patient, omsgid) for _ in range(10)]))
    assert outcomes == ["ALREADY_REVERSED"] * 9 + ["REVERSED"], outcomes
    assert (balance(r13, patient), balance(r13, helper)) == (10_000, 10_000)


def test_a_2601_naming_another_insured_place_is_refused_and_writes_nothing(
        national: National, start_router: Callable[..., RunningRouter], rdb: redis.Redis):
    """A 2601's insuplc_admdvs is checked as a 2208's: the settlement's own insured place or the one
    insuring the person now (as 1101 answers it); another province's or another 统筹区's is
    INSURED_PLACE_MISMATCH before anything is written, whether the original arrived or not."""
    router = start_router()
    r13 = national.reg("13")
    patient, helper = patient_with_helper(national)
    settled_msgid, _ = settled(router, patient, 3_000)
    never = new_msgid()
    for omsgid in (settled_msgid, never):
        for place in ("110000", "130200", "620100"):
            before = snapshot(rdb)
            req = undo_req(patient, omsgid)
            req.insuplc_admdvs = place
            try:
                router.stub.Undo(req, timeout=T)
                raise AssertionError(f"2601 naming {place} was answered")
            except grpc.RpcError as exc:
                assert (exc.code(), reason(exc)) == (grpc.StatusCode.FAILED_PRECONDITION, "INSURED_PLACE_MISMATCH")
            assert snapshot(rdb) == before, f"a 2601 naming {place} wrote"
    assert balance(r13, patient) == 7_000
    # Control: the person's own place undoes the settlement; the late original that never came settles.
    req = undo_req(patient, settled_msgid)
    req.insuplc_admdvs = "130100"
    assert router.stub.Undo(req, timeout=T).outcome == "REVERSED"
    assert router.stub.Settle(pb.SettleRequest(msgid=never, institution=HEBEI, input=pb.SettleInput(
        psn_no=patient, psn_part_amt_fen=1_000, acct_used_flag="1", category=cpb.CATEGORY_OUTPATIENT)),
        timeout=T).setlinfo.acct_pay_fen == 1_000


def test_a_2601_of_a_2208_that_another_2601_restores_meanwhile_answers_already_restored(
        national: National, start_router: Callable[..., RunningRouter]):
    """Two 2601s of one 2208: the one that finds the reversal undone by the other while it checks the
    sources is answered ALREADY_RESTORED, as it is when it comes later; not UNDO_SOURCE_SHORT, which
    would tell the hospital that the reversal stands while the accounts were charged again."""
    from medaid.registry.v1 import registry_pb2 as rpb
    router = start_router()
    r13 = national.reg("13")
    patient, helper = patient_with_helper(national)
    omsgid, setl = settled(router, patient, 12_000)
    rev_msgid = new_msgid()
    router.stub.ReverseSettlement(pb.ReverseSettlementRequest(msgid=rev_msgid, institution=HEBEI,
                                                              setl_id=setl.setl_id, psn_no=patient), timeout=T)
    undo = national.registries["13"].registry.undo
    plain = undo._check
    other = new_msgid()
    raced = []

    async def racing(rec: Any) -> None:
        if not raced:  # the first 2601's check of the sources: the other 2601 restores the settlement first
            raced.append(None)
            raced.append(await national.registries["13"].registry.undo_reversal(rpb.UndoReversalRequest(
                request_id=other, reversal_id=rev_msgid)))
        await plain(rec)

    undo._check = racing  # type: ignore[method-assign]
    try:
        out = router.stub.Undo(pb.UndoRequest(msgid=new_msgid(), institution=HEBEI, psn_no=patient,
                                              omsgid=rev_msgid, oinfno="2208"), timeout=T)
    finally:
        undo._check = plain  # type: ignore[method-assign]
    assert raced[1].outcome == "RESTORED"
    assert (out.outcome, out.setl_id) == ("ALREADY_RESTORED", setl.setl_id)
    assert (balance(r13, patient), balance(r13, helper)) == (0, 8_000)  # charged again once
