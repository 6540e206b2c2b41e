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


# --- a 2601 of the 2207 and a 2601 of its 2208 at once ------------------------------------------------

def _reversed_settlement(router: RunningRouter, patient: str) -> tuple[str, str, pb.SetlInfo]:
    """A settlement (its 2207's msgid) and the 2208 that reversed it (its msgid)."""
    omsgid, setl = settled(router, patient, 12_000)
    rev_msgid = new_msgid()
    router.stub.ReverseSettlement(pb.ReverseSettlementRequest(msgid=rev_msgid, institution=HEBEI,
                                                              setl_id=setl.setl_id, psn_no=patient), timeout=T)
    return omsgid, rev_msgid, setl


def _cancel_pair(patient: str, omsgid: str, rev_msgid: str) -> tuple[pb.UndoRequest, pb.UndoRequest]:
    of_2207 = undo_req(patient, omsgid)
    of_2208 = pb.UndoRequest(msgid=new_msgid(), institution=HEBEI, psn_no=patient, omsgid=rev_msgid, oinfno="2208")
    return of_2207, of_2208


def _answer(router: RunningRouter, req: pb.UndoRequest) -> str:
    try:
        return router.stub.Undo(req, timeout=T).outcome
    except grpc.RpcError as exc:
        return reason(exc) or exc.code().name


def _voided(rdb: redis.Redis, omsgid: str) -> bool:
    fp = rdb.hget(f"rtr:{{mid:{omsgid}}}", "fp")  # the msgid names the institution already (msgid.scoped)
    return fp is not None and fp.decode().startswith("void:")


def _assert_told_as_it_stands(national: National, rdb: redis.Redis, patient: str, helper: str, omsgid: str,
                              of_2207: str, of_2208: str) -> None:
    """What the hospital heard is what the money is: the settlement undone for good (its 2207 voided, the
    2601 of the 2208 refused or overtaken by the 2601 of the 2207), or charged again (never told undone)."""
    r13 = national.reg("13")
    money = (balance(r13, patient), balance(r13, helper))
    if money == (10_000, 10_000):  # reversed: as after the 2601 of the 2207, last
        assert (of_2207, of_2208) in {("ALREADY_REVERSED", "ORIGINAL_CANCELLED"), ("REVERSED", "RESTORED")}, \
            (of_2207, of_2208)
        assert _voided(rdb, omsgid)
    else:  # charged again, once: the 2601 of the 2207 must not have said it was undone
        assert money == (0, 8_000), money
        assert of_2208 == "RESTORED" and of_2207 not in ("ALREADY_REVERSED", "REVERSED", "VOIDED"), \
            (of_2207, of_2208)
        assert not _voided(rdb, omsgid)


def test_2601s_of_a_2207_and_of_its_2208_at_once_answer_what_the_money_is(
        national: National, start_router: Callable[..., RunningRouter], rdb: redis.Redis):
    """A hospital cancels a settlement (2601 of the 2207) and its reversal (2601 of the 2208) at the same
    moment: whichever wins, both answers describe the money as it ends, and money is conserved."""
    import threading
    router = start_router()
    seen = set()
    for _ in range(20):
        patient, helper = patient_with_helper(national)
        omsgid, rev_msgid, _ = _reversed_settlement(router, patient)
        pair = _cancel_pair(patient, omsgid, rev_msgid)
        barrier = threading.Barrier(2)

        def send(req: pb.UndoRequest, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            return _answer(router, req)

        with ThreadPoolExecutor(2) as pool:
            of_2207, of_2208 = pool.map(send, pair)
        _assert_told_as_it_stands(national, rdb, patient, helper, omsgid, of_2207, of_2208)
        seen.add((of_2207, of_2208))
    assert seen, seen


def test_a_2601_of_a_2208_restoring_while_the_2601_of_its_2207_reads_the_settlement(
        national: National, start_router: Callable[..., RunningRouter], rdb: redis.Redis):
    """The 2601 of the 2207 reads the settlement reversed; the 2601 of the 2208 restores it before the first
    goes on: the first then reverses it again (REVERSED), never ALREADY_REVERSED over charged accounts."""
    router = start_router()
    patient, helper = patient_with_helper(national)
    omsgid, rev_msgid, setl = _reversed_settlement(router, patient)
    of_2207, of_2208 = _cancel_pair(patient, omsgid, rev_msgid)
    inner = router.router
    plain = inner._registry_call
    other: list[Any] = []

    async def racing(province: str, method: str, request: Any, **kw: Any) -> Any:
        answer = await plain(province, method, request, **kw)
        if method == "GetSettlements" and not other:  # the 2601 of the 2207 has read the settlement
            other.append(None)
            other[0] = await inner.undo(of_2208)
        return answer

    inner._registry_call = racing  # type: ignore[method-assign]
    try:
        out = router.stub.Undo(of_2207, timeout=T)
    finally:
        inner._registry_call = plain  # type: ignore[method-assign]
    assert other[0].outcome == "RESTORED"
    assert (out.outcome, out.setl_id, out.acct_pay_fen, out.acct_mulaid_pay_fen) == ("REVERSED", setl.setl_id,
                                                                                     10_000, 2_000)
    _assert_told_as_it_stands(national, rdb, patient, helper, omsgid, out.outcome, other[0].outcome)


def test_a_2601_of_a_2208_checked_before_the_2601_of_its_2207_finds_it_reversed(
        national: National, start_router: Callable[..., RunningRouter], rdb: redis.Redis):
    """The 2601 of the 2208 has passed the router's check when the 2601 of the 2207 finds the settlement
    reversed and answers ALREADY_REVERSED: the reversal stands for good, the 2601 of the 2208 is refused
    ORIGINAL_CANCELLED and writes nothing."""
    router = start_router()
    patient, helper = patient_with_helper(national)
    omsgid, rev_msgid, setl = _reversed_settlement(router, patient)
    of_2207, of_2208 = _cancel_pair(patient, omsgid, rev_msgid)
    inner = router.router
    plain = inner._registry_call
    other: list[Any] = []

    async def racing(province: str, method: str, request: Any, **kw: Any) -> Any:
        if method == "UndoReversal" and not other:  # past the router's check of the 2207's msgid
            other.append(None)
            other[0] = await inner.undo(of_2207)
        return await plain(province, method, request, **kw)

    inner._registry_call = racing  # type: ignore[method-assign]
    try:
        refused = _answer(router, of_2208)
    finally:
        inner._registry_call = plain  # type: ignore[method-assign]
    assert (other[0].outcome, other[0].setl_id) == ("ALREADY_REVERSED", setl.setl_id)
    assert refused == "ORIGINAL_CANCELLED"
    _assert_told_as_it_stands(national, rdb, patient, helper, omsgid, other[0].outcome, refused)
    # Refused by a rule, the 2601 of the 2208 is free: sent again it is refused the same, and writes nothing.
    before = snapshot(rdb)
    assert _answer(router, of_2208) == "ORIGINAL_CANCELLED"
    assert snapshot(rdb) == before
