"""SPEC §7 "a refusal writes nothing", at the router: a 2207/2208 a registry refuses by a rule leaves
no msgid claim (`rtr:{mid:…}`) behind, so the corrected message may reuse the msgid; a msgid that
settled stays bound to its transaction and person. Real registries, router and Redis, in-process;
both the batched (SettleBatch) and the one-by-one (Settle) router paths."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import redis
from conftest import LoopThread, National, RunningRouter
from medaid.common.idnumber import make
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.claims import MsgidClaims, stale_after_s
from medaid.router.v1 import router_pb2 as pb
from support import EMPLOYEE, credit, enroll, reason, rid

HEBEI = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
T = 10.0
_seq = itertools.count(1)


def new_msgid() -> str:
    return f"{HEBEI.fixmedins_code}20261122100000{next(_seq) % 10_000:04d}"


def settle_req(mid: str, psn: str, *, category: int = cpb.CATEGORY_OUTPATIENT, insuplc: str = "",
               amount: int = 1_000) -> pb.SettleRequest:
    return pb.SettleRequest(msgid=mid, institution=HEBEI, input=pb.SettleInput(
        psn_no=psn, insuplc_admdvs=insuplc, psn_part_amt_fen=amount, acct_used_flag="1", category=category))


def refusal(call: Any, req: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(req, timeout=T)
    return err.value


def claim_keys(r: redis.Redis) -> list[bytes]:
    return sorted(r.scan_iter(match="rtr:{mid:*"))


def indexed(r: redis.Redis, mid: str) -> bool:
    """Whether the router's per-institution index (router/index.py) holds the settlement `mid`."""
    return r.zscore(f"rtr:{{inst:{HEBEI.fixmedins_code}}}:setl", mid) is not None or \
        r.hexists(f"rtr:{{inst:{HEBEI.fixmedins_code}}}:info", mid)


@pytest.fixture(params=[True, False], ids=["batched", "one-by-one"])
def router(request: Any, start_router: Callable[..., RunningRouter]) -> RunningRouter:
    return start_router(batch=request.param)


def test_refused_2207_leaves_no_claim_and_the_corrected_resend_settles(
        router: RunningRouter, national: National, rdb: redis.Redis):
    hb = national.reg("13")
    p = enroll(hb)
    credit(hb, p, 10_000)
    suspended = enroll(hb)
    hb.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=suspended, status=cpb.PERSON_STATUS_SUSPENDED), timeout=T)
    stranger = make("130102", "19700707", "555")  # valid, enrolled nowhere: routed by insuplc_admdvs
    settled: list[bytes] = []
    for wrong, code in ((settle_req("", p, category=cpb.CATEGORY_FITNESS), "CATEGORY_NOT_PAYABLE"),
                        (settle_req("", stranger, insuplc="130100"), "PERSON_NOT_FOUND"),
                        (settle_req("", suspended), "MEMBER_NOT_INSURED")):
        mid = new_msgid()
        wrong.msgid = mid
        err = refusal(router.stub.Settle, wrong)
        assert reason(err) == code
        assert claim_keys(rdb) == settled, code
        assert not indexed(rdb, mid), code  # nor an index entry
        # The corrected message (another person, another category) under the same msgid settles once.
        s = router.stub.Settle(settle_req(mid, p), timeout=T).setlinfo
        assert (s.setl_id, s.psn_no, s.acct_pay_fen) == (mid, p, 1_000)
        assert indexed(rdb, mid)
        settled = sorted([*settled, MsgidClaims.key(mid).encode()])
        assert router.stub.Settle(settle_req(mid, p), timeout=T).setlinfo == s
        # Once it settled, the msgid is bound to that person for good.
        err = refusal(router.stub.Settle, settle_req(mid, suspended))
        assert (err.code(), reason(err)) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
        # The msgid resent with a field changed is refused as a reused id (SPEC §7), before any rule is
        # asked; the attempt that settled keeps the claim.
        err = refusal(router.stub.Settle, settle_req(mid, p, category=cpb.CATEGORY_FITNESS))
        assert reason(err) == "IDEMPOTENCY_KEY_REUSED"
        assert rdb.exists(MsgidClaims.key(mid))
        err = refusal(router.stub.Settle, settle_req(mid, suspended))
        assert reason(err) == "IDEMPOTENCY_KEY_REUSED"
    assert hb.GetPerson(rpb.GetPersonRequest(id_number=p), timeout=T).person.balance_fen == 7_000


def test_concurrent_refused_duplicates_leave_no_claim(router: RunningRouter, national: National, rdb: redis.Redis):
    """Identical 2207s sent together (one SettleBatch on the batched path) are all refused: the last
    one out removes the claim; identical ones that settle keep it and settle once."""
    hb = national.reg("13")
    p = enroll(hb)
    credit(hb, p, 10_000)
    mid = new_msgid()
    wrong = settle_req(mid, p, category=cpb.CATEGORY_CASH_WITHDRAWAL)
    futures = [router.stub.Settle.future(wrong, timeout=T) for _ in range(4)]
    for f in futures:
        assert reason(f.exception()) == "CATEGORY_NOT_PAYABLE"
    assert claim_keys(rdb) == []
    right = settle_req(mid, p, amount=2_500)
    futures = [router.stub.Settle.future(right, timeout=T) for _ in range(4)]
    answers = {f.result().setlinfo.SerializeToString() for f in futures}
    assert len(answers) == 1
    assert hb.GetPerson(rpb.GetPersonRequest(id_number=p), timeout=T).person.balance_fen == 7_500
    assert claim_keys(rdb) == [MsgidClaims.key(mid).encode()]


def test_refused_2208_leaves_no_claim(router: RunningRouter, national: National, rdb: redis.Redis):
    hb = national.reg("13")
    p = enroll(hb)
    credit(hb, p, 10_000)
    s = router.stub.Settle(settle_req(new_msgid(), p), timeout=T).setlinfo
    first = pb.ReverseSettlementRequest(msgid=new_msgid(), institution=HEBEI, setl_id=s.setl_id, psn_no=p)
    assert router.stub.ReverseSettlement(first, timeout=T).acct_refund_fen == 1_000
    before = claim_keys(rdb)
    again = pb.ReverseSettlementRequest(msgid=new_msgid(), institution=HEBEI, setl_id=s.setl_id, psn_no=p)
    err = refusal(router.stub.ReverseSettlement, again)
    assert reason(err) == "ALREADY_REVERSED"
    assert claim_keys(rdb) == before
    # The refused 2208's msgid is free: a 2207 may use it.
    assert router.stub.Settle(settle_req(again.msgid, p), timeout=T).setlinfo.setl_id == again.msgid
    assert hb.GetPerson(rpb.GetPersonRequest(id_number=p), timeout=T).person.balance_fen == 9_000


def test_claim_counts_open_attempts(loop_thread: LoopThread, start_router: Callable[..., RunningRouter],
                                    rdb: redis.Redis):
    """MsgidClaims against Redis: an attempt that settled (or whose outcome is unknown) never leaves,
    so a concurrent duplicate's refusal cannot remove the claim under it."""
    claims = start_router().router.claims

    def run(coro: Any) -> Any:
        return loop_thread.run(coro)

    run(claims.claim("M1", "2207:A"))  # creates
    run(claims.claim("M1", "2207:A"))  # an identical duplicate joins
    with pytest.raises(Exception) as err:
        run(claims.claim("M1", "2207:B"))
    assert getattr(err.value, "reason", "") == "IDEMPOTENCY_KEY_REUSED"
    run(claims.release("M1", "2207:A"))  # one refused; the other settled and stays
    run(claims.release("M1", "2207:B"))  # not this claim's fingerprint: no effect
    assert rdb.exists(MsgidClaims.key("M1"))
    assert run(claims.claim_many([("M1", "2207:B"), ("M2", "2207:B"), ("M2", "2207:B")]))[0] is not None
    run(claims.release_many([("M2", "2207:B")]))
    assert rdb.exists(MsgidClaims.key("M2"))  # one of its two attempts is still open
    run(claims.release_many([("M2", "2207:B")]))
    assert not rdb.exists(MsgidClaims.key("M2"))
    # A claim written as a plain string (before attempts were counted) stays permanent.
    rdb.set(MsgidClaims.key("M3"), "2207:C")
    run(claims.claim("M3", "2207:C"))
    run(claims.release("M3", "2207:C"))
    assert rdb.get(MsgidClaims.key("M3")) == b"2207:C"
    with pytest.raises(Exception) as err:
        run(claims.claim("M3", "2207:D"))
    assert getattr(err.value, "reason", "") == "IDEMPOTENCY_KEY_REUSED"


def test_unanswered_attempts_are_over_once_the_claims_last_attempt_is_stale(
        loop_thread: LoopThread, start_router: Callable[..., RunningRouter], rdb: redis.Redis):
    """MsgidClaims against Redis, with a router deadline of 250 ms (stale after 1 s): an identical
    resend that joins a claim whose last attempt began longer ago than that counts as its only open
    attempt, so its refusal by a rule frees the msgid; joined sooner, the earlier attempts still count.
    A claim an attempt settled under (done) is never freed, nor is another fingerprint let in. (The
    "sooner" case needs two claims in a row within the stale time: 1 s, not less, so that a loaded
    machine's pause between them does not make it stale.)"""
    claims = MsgidClaims(start_router().router.directory.client, deadline_s=0.25)
    stale = stale_after_s(0.25)

    def run(coro: Any) -> Any:
        return loop_thread.run(coro)

    def reason_of(coro: Any) -> str:
        with pytest.raises(Exception) as err:
            run(coro)
        return str(getattr(err.value, "reason", ""))

    run(claims.claim("S1", "2207:A|d1"))  # unanswered: never leaves
    run(claims.claim("S1", "2207:A|d1"))  # a resend in time joins it
    run(claims.release("S1", "2207:A|d1"))
    assert reason_of(claims.claim("S1", "2207:A|d2")) == "IDEMPOTENCY_KEY_REUSED"
    time.sleep(stale + 0.1)
    assert reason_of(claims.claim("S1", "2207:A|d2")) == "IDEMPOTENCY_KEY_REUSED"  # only an identical resend
    run(claims.claim("S1", "2207:A|d1"))  # joins as the only open attempt
    assert rdb.hget(MsgidClaims.key("S1"), "open") == b"1"
    run(claims.release("S1", "2207:A|d1"))
    assert not rdb.exists(MsgidClaims.key("S1"))
    run(claims.claim("S1", "2207:A|d2"))  # the corrected message
    # Settled: bound for good, stale or not.
    run(claims.claim("S2", "2207:B|d1"))
    run(claims.finish_many([], [("S2", "2207:B|d1")]))
    time.sleep(stale + 0.1)
    run(claims.claim("S2", "2207:B|d1"))
    run(claims.release("S2", "2207:B|d1"))
    assert rdb.hget(MsgidClaims.key("S2"), "open") == b"1"
    assert reason_of(claims.claim("S2", "2207:B|d2")) == "IDEMPOTENCY_KEY_REUSED"
    # Voided by a 2601: neither marked nor freed.
    run(claims.void("S3", "U1", always=False))
    run(claims.finish_many([], [("S3", "2207:C|d1")]))
    assert not rdb.hexists(MsgidClaims.key("S3"), "done")
    # A claim written before attempts were dated: dated by its next attempt, over only after the limit.
    rdb.hset(MsgidClaims.key("S4"), mapping={"fp": "2207:D|d1", "open": 1})
    run(claims.claim("S4", "2207:D|d1"))
    run(claims.release("S4", "2207:D|d1"))
    assert rdb.hget(MsgidClaims.key("S4"), "open") == b"1"
    time.sleep(stale + 0.1)
    run(claims.claim("S4", "2207:D|d1"))
    run(claims.release("S4", "2207:D|d1"))
    assert not rdb.exists(MsgidClaims.key("S4"))


def test_a_claim_without_the_message_digest_is_joined_by_its_persons_attempts(
        loop_thread: LoopThread, start_router: Callable[..., RunningRouter], rdb: redis.Redis):
    """A 2207 claim written before fingerprints carried the message's digest ('2207:<psn>') is the same
    attempt as '2207:<psn>|<digest>' of that person: joined and left as before; a digest claim is not
    joined by another digest (a field changed), nor a legacy claim by another person."""
    claims = start_router().router.claims

    def run(coro: Any) -> Any:
        return loop_thread.run(coro)

    def reason_of(coro: Any) -> str:
        with pytest.raises(Exception) as err:
            run(coro)
        return str(getattr(err.value, "reason", ""))

    rdb.hset(MsgidClaims.key("L1"), mapping={"fp": "2207:A", "open": 1})  # as an earlier version left it
    run(claims.claim("L1", "2207:A|d1"))  # the same person's resend joins
    assert reason_of(claims.claim("L1", "2207:B|d1")) == "IDEMPOTENCY_KEY_REUSED"
    run(claims.release("L1", "2207:A|d1"))
    assert rdb.hget(MsgidClaims.key("L1"), "open") == b"1"
    run(claims.release("L1", "2207:A|d9"))
    assert not rdb.exists(MsgidClaims.key("L1"))  # the last attempt left: the msgid is free again
    run(claims.claim("L2", "2207:A|d1"))
    assert reason_of(claims.claim("L2", "2207:A|d2")) == "IDEMPOTENCY_KEY_REUSED"
    assert reason_of(claims.claim("L2", "2207:A")) == "IDEMPOTENCY_KEY_REUSED"
    rdb.set(MsgidClaims.key("L3"), "2207:C")  # the oldest, plain string form
    run(claims.claim("L3", "2207:C|d1"))
    assert MsgidClaims.parse("2207:C|d1") == ("2207", "C") == MsgidClaims.parse("2207:C")
    assert MsgidClaims.parse("2208:C:S1") == ("2208", "C")


def test_a_2207_resent_after_the_person_moved_province_is_answered_not_settled_again(
        router: RunningRouter, national: National, rdb: redis.Redis):
    """SPEC §7: a msgid has one effect. A 2207 without insuplc_admdvs is routed by the national
    directory; resent after the person moved province it goes to the province that settled it, which
    answers it as the first time, instead of settling it again where the person is insured now."""
    hb, bj = national.reg("13"), national.reg("11")
    p = enroll(hb)
    credit(hb, p, 5_000)
    req = settle_req(new_msgid(), p)
    first = router.stub.Settle(req, timeout=T)
    hb.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=p, status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"),
        timeout=T)
    bj.EnrollPerson(rpb.EnrollPersonRequest(request_id=rid("enroll"), id_number=p, name="张三",
                                            insurance_type=EMPLOYEE, pooling_region="110000"), timeout=T)
    credit(bj, p, 3_000)
    assert router.stub.Settle(req, timeout=T) == first
    assert bj.GetAccount(rpb.GetAccountRequest(id_number=p), timeout=T).balance_fen == 3_000
    assert hb.GetAccount(rpb.GetAccountRequest(id_number=p), timeout=T).balance_fen == 4_000
    # A new msgid of the same bill is a new settlement, where the person is insured now.
    assert router.stub.Settle(settle_req(new_msgid(), p), timeout=T).setlinfo.insuplc_admdvs == "110000"
    assert bj.GetAccount(rpb.GetAccountRequest(id_number=p), timeout=T).balance_fen == 2_000


def test_a_second_2601_of_a_2208_after_the_person_moved_province_finds_it_restored(
        router: RunningRouter, national: National, rdb: redis.Redis):
    """A 2601 undid a 2208 (RESTORED), and the person then moved province. A second 2601 of the same
    2208, under a new msgid (the hospital lost the first answer), asks the province that settled and
    reversed it, which says an earlier 2601 restored it: not "the original never arrived" (VOIDED),
    and nothing is written in the province the person is insured in now."""
    hb, bj = national.reg("13"), national.reg("11")
    p = enroll(hb)
    credit(hb, p, 5_000)
    settled = router.stub.Settle(settle_req(new_msgid(), p), timeout=T).setlinfo
    rev = new_msgid()
    router.stub.ReverseSettlement(pb.ReverseSettlementRequest(
        msgid=rev, institution=HEBEI, setl_id=settled.setl_id, psn_no=p), timeout=T)
    first = router.stub.Undo(pb.UndoRequest(msgid=new_msgid(), institution=HEBEI, psn_no=p, omsgid=rev,
                                            oinfno="2208"), timeout=T)
    assert first.outcome == "RESTORED"
    hb.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=p, status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"),
        timeout=T)
    bj.EnrollPerson(rpb.EnrollPersonRequest(request_id=rid("enroll"), id_number=p, name="张三",
                                            insurance_type=EMPLOYEE, pooling_region="110000"), timeout=T)
    again = router.stub.Undo(pb.UndoRequest(msgid=new_msgid(), institution=HEBEI, psn_no=p, omsgid=rev,
                                            oinfno="2208"), timeout=T)
    assert (again.outcome, again.setl_id) == ("ALREADY_RESTORED", settled.setl_id), again
    assert not rdb.exists(f"reg:11:{{rid:{rev}}}"), "the new province voided an id it never saw"
    assert hb.GetAccount(rpb.GetAccountRequest(id_number=p), timeout=T).balance_fen == 4_000


def undo_req(omsgid: str, oinfno: str, psn: str) -> pb.UndoRequest:
    return pb.UndoRequest(msgid=new_msgid(), institution=HEBEI, psn_no=psn, omsgid=omsgid, oinfno=oinfno)


def test_a_2601_that_changes_nothing_leaves_the_first_2601_recorded(
        router: RunningRouter, national: National, rdb: redis.Redis):
    """A second 2601 of the same 2207 or 2208 (a new msgid: the hospital lost the first answer) is
    answered ALREADY_REVERSED / ALREADY_RESTORED and writes nothing: the router's record of the 2601
    that cancelled the original stays the first one, and so does the one a later refusal names."""
    hb = national.reg("13")
    p = enroll(hb)
    credit(hb, p, 10_000)
    # 2207 A reversed by a 2601; a second 2601 of A finds it reversed.
    a = settle_req(new_msgid(), p)
    router.stub.Settle(a, timeout=T)
    u1, u2 = undo_req(a.msgid, "2207", p), undo_req(a.msgid, "2207", p)
    assert router.stub.Undo(u1, timeout=T).outcome == "REVERSED"
    assert router.stub.Undo(u2, timeout=T).outcome == "ALREADY_REVERSED"
    assert rdb.hget(MsgidClaims.key(a.msgid), "fp") == f"void:{u1.msgid}".encode()
    # 2207 B reversed by a 2208 R: the first 2601 of B cancels B for good, a second one changes nothing,
    # and a 2601 of R is refused naming the first.
    b = settle_req(new_msgid(), p)
    router.stub.Settle(b, timeout=T)
    r = pb.ReverseSettlementRequest(msgid=new_msgid(), institution=HEBEI, setl_id=b.msgid, psn_no=p)
    router.stub.ReverseSettlement(r, timeout=T)
    u3, u4 = undo_req(b.msgid, "2207", p), undo_req(b.msgid, "2207", p)
    assert router.stub.Undo(u3, timeout=T).outcome == "ALREADY_REVERSED"
    assert router.stub.Undo(u4, timeout=T).outcome == "ALREADY_REVERSED"
    assert rdb.hget(MsgidClaims.key(b.msgid), "fp") == f"void:{u3.msgid}".encode()
    err = refusal(router.stub.Undo, undo_req(r.msgid, "2208", p))
    assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "ORIGINAL_CANCELLED")
    assert u3.msgid in (err.details() or "") and u4.msgid not in (err.details() or "")
    # 2208 R2 of C undone by a 2601; a second 2601 of R2 finds it restored.
    c = settle_req(new_msgid(), p)
    router.stub.Settle(c, timeout=T)
    r2 = pb.ReverseSettlementRequest(msgid=new_msgid(), institution=HEBEI, setl_id=c.msgid, psn_no=p)
    router.stub.ReverseSettlement(r2, timeout=T)
    u5, u6 = undo_req(r2.msgid, "2208", p), undo_req(r2.msgid, "2208", p)
    assert router.stub.Undo(u5, timeout=T).outcome == "RESTORED"
    assert router.stub.Undo(u6, timeout=T).outcome == "ALREADY_RESTORED"
    assert rdb.hget(MsgidClaims.key(r2.msgid), "fp") == f"void:{u5.msgid}".encode()
    assert hb.GetAccount(rpb.GetAccountRequest(id_number=p), timeout=T).balance_fen == 9_000


class _Crash(Exception):
    pass


def test_a_2207_voided_after_its_registry_never_settled_it_is_refused_as_cancelled(
        router: RunningRouter, national: National, rdb: redis.Redis):
    """The registry died before it settled a 2207 the router had claimed (the router's claim stays: the
    outcome was unknown to it). A 2601 of it is answered VOIDED, the registry voiding the id; the
    router's claim is voided too, so the 2207, resent as it was or with any field changed, is refused
    ORIGINAL_CANCELLED by the router, as by the registry, and nothing is written."""
    hb, registry = national.reg("13"), national.registries["13"].registry
    p = enroll(hb)
    credit(hb, p, 10_000)
    a = settle_req(new_msgid(), p)

    def crash(point: str) -> None:
        if point == "settle.before_apply":
            raise _Crash(point)

    registry.fault_hook = crash
    try:
        err = refusal(router.stub.Settle, a)
        assert reason(err) not in ("", "ORIGINAL_CANCELLED", "IDEMPOTENCY_KEY_REUSED"), err
    finally:
        registry.fault_hook = None
    assert rdb.exists(MsgidClaims.key(a.msgid))  # the router does not know it was never settled
    u = undo_req(a.msgid, "2207", p)
    assert router.stub.Undo(u, timeout=T).outcome == "VOIDED"
    for resent in (settle_req(a.msgid, p, amount=2_000), a, settle_req(a.msgid, p, amount=3_000)):
        err = refusal(router.stub.Settle, resent)
        assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "ORIGINAL_CANCELLED")
    assert rdb.hget(MsgidClaims.key(a.msgid), "fp") == f"void:{u.msgid}".encode()
    assert hb.GetAccount(rpb.GetAccountRequest(id_number=p), timeout=T).balance_fen == 10_000


def test_a_2207_fingerprint_stays_byte_identical():
    """A msgid's claim stores its 2207's fingerprint and every later attempt is compared with it, also
    after the router is upgraded: the same message must keep giving these very bytes. The msgid is not
    part of it, and the id number counts as normalised (`x` and `X` are one message)."""
    from medaid.router.service import settle_fingerprint

    def req(msgid: str, psn_no: str) -> pb.SettleRequest:
        return pb.SettleRequest(msgid=msgid, institution=HEBEI, input=pb.SettleInput(
            psn_no=psn_no, psn_part_amt_fen=12345, medfee_sumamt_fen=20000, acct_used_flag="1",
            category=cpb.CATEGORY_OUTPATIENT, mdtrt_id="门诊0001", insutype="310", med_type="11"))

    pinned = "2207:13010219800101123X|d82af3de9b8b25f40d99"
    first = req("H13010100001202611221000000001", "13010219800101123x")
    assert settle_fingerprint("13010219800101123X", first) == pinned
    assert settle_fingerprint("13010219800101123X", req("H13010100001202611221000000002", "13010219800101123X")) \
        == pinned
    assert first.msgid == "H13010100001202611221000000001" and first.input.psn_no == "13010219800101123x"
    changed = req("H13010100001202611221000000001", "13010219800101123X")
    changed.input.psn_part_amt_fen += 1
    assert settle_fingerprint("13010219800101123X", changed) != pinned
