"""SPEC §7: every request id has exactly one effect; a replay returns the first answer; the same id with
different fields is IDEMPOTENCY_KEY_REUSED and writes nothing; a refused request writes nothing, so a
resend after fixing the cause is judged afresh and succeeds."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from medaid.common.v1 import common_pb2 as cpb
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
    settle,
    settle_request,
    snapshot,
    total_balances,
)


def _fails(call: Any, code: grpc.StatusCode, want: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as ei:
        call()
    assert ei.value.code() == code, (ei.value.code(), ei.value.details())
    assert reason(ei.value) == want, (reason(ei.value), ei.value.details())
    assert ei.value.details()
    return ei.value


def _reused(rdb: Any, call: Any) -> None:
    before = snapshot(rdb)
    _fails(call, grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert snapshot(rdb) == before, "a reused request id wrote something"


def _replays_identically(rdb: Any, call: Any, req: Any, first: Any, times: int = 3) -> None:
    """Replays return the first answer and do not touch Redis at all."""
    before = snapshot(rdb)
    for _ in range(times):
        assert call(req) == first
    assert snapshot(rdb) == before, "a replay wrote something"


def _ledger(rdb: Any, pid: str) -> list[dict[str, Any]]:
    return [json.loads(e) for e in rdb.lrange(f"reg:13:{{p:{pid}}}:ledger", 0, -1)]


def _enroll_req(pid: str, *, itype: int = cpb.INSURANCE_TYPE_EMPLOYEE, name: str = "赵六",
                request_id: str | None = None) -> pb.EnrollPersonRequest:
    return pb.EnrollPersonRequest(request_id=request_id or rid("enroll"), id_number=pid, name=name,
                                  insurance_type=itype, pooling_region="130100")


def _status(stub: Any, pid: str, status: int) -> pb.UpdatePersonStatusResponse:
    return stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=pid,
                                                                status=status))


# --- EnrollPerson ----------------------------------------------------------------------------


def test_enroll_replay_and_reuse(hebei, rdb):
    s = hebei.stub
    pid = new_id()
    req = _enroll_req(pid)
    first = s.EnrollPerson(req)
    assert first.person.id_number == pid and first.person.name == "赵六"
    _replays_identically(rdb, s.EnrollPerson, req, first)
    assert rdb.scard("reg:13:{idx}:people") == 1

    # Same id, a different name / a different person: refused, nothing written.
    other = new_id()
    _reused(rdb, lambda: s.EnrollPerson(_enroll_req(pid, name="钱七", request_id=req.request_id)))
    _reused(rdb, lambda: s.EnrollPerson(_enroll_req(other, request_id=req.request_id)))
    _fails(lambda: s.GetPerson(pb.GetPersonRequest(id_number=other)), grpc.StatusCode.NOT_FOUND,
           "PERSON_NOT_FOUND")
    assert s.GetPerson(pb.GetPersonRequest(id_number=pid)).person.name == "赵六"

    # Enrolling the same person again under a new id is refused and writes nothing …
    dup = _enroll_req(pid, name="孙八")
    before = snapshot(rdb)
    _fails(lambda: s.EnrollPerson(dup), grpc.StatusCode.ALREADY_EXISTS, "ALREADY_ENROLLED")
    assert snapshot(rdb) == before
    # … and the refused id is free for another request.
    assert s.EnrollPerson(_enroll_req(other, request_id=dup.request_id)).person.id_number == other


# --- CreditAccount ---------------------------------------------------------------------------


def test_credit_replay_has_one_effect(hebei, rdb):
    s = hebei.stub
    pid = enroll(s)
    req = pb.CreditAccountRequest(request_id=rid("credit"), id_number=pid, amount_fen=12_345,
                                  kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
    first = s.CreditAccount(req)
    assert first.balance_fen == 12_345 and first.entry.amount_fen == 12_345 and first.entry.ref == req.request_id
    _replays_identically(rdb, s.CreditAccount, req, first)
    # A later credit moves the balance; a replay of the first still answers as the first did.
    credit(s, pid, 1)
    assert s.CreditAccount(req) == first
    assert balance(s, pid) == 12_346
    led = _ledger(rdb, pid)
    assert [e["amount"] for e in led] == [12_345, 1]
    assert [e["ref"] for e in led].count(req.request_id) == 1

    changed = pb.CreditAccountRequest()
    changed.CopyFrom(req)
    changed.amount_fen = 99_999
    _reused(rdb, lambda: s.CreditAccount(changed))
    changed.amount_fen, changed.period = 12_345, "202612"
    _reused(rdb, lambda: s.CreditAccount(changed))
    assert balance(s, pid) == 12_346


def test_refused_credit_writes_nothing_and_resend_succeeds(hebei, rdb):
    s = hebei.stub
    pid = enroll(s)
    _status(s, pid, cpb.PERSON_STATUS_SUSPENDED)
    req = pb.CreditAccountRequest(request_id=rid("credit"), id_number=pid, amount_fen=500,
                                  kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION)
    before = snapshot(rdb)
    _fails(lambda: s.CreditAccount(req), grpc.StatusCode.FAILED_PRECONDITION, "PERSON_NOT_ACTIVE")
    assert snapshot(rdb) == before
    _fails(lambda: s.CreditAccount(req), grpc.StatusCode.FAILED_PRECONDITION, "PERSON_NOT_ACTIVE")
    assert snapshot(rdb) == before
    _status(s, pid, cpb.PERSON_STATUS_ACTIVE)
    assert s.CreditAccount(req).balance_fen == 500
    assert s.CreditAccount(req).balance_fen == 500
    assert balance(s, pid) == 500

    # A resident has no personal account: refused, nothing written.
    res = enroll(s, itype=RESIDENT)
    before = snapshot(rdb)
    _fails(lambda: credit(s, res, 100), grpc.StatusCode.FAILED_PRECONDITION, "NO_PERSONAL_ACCOUNT")
    assert snapshot(rdb) == before


# --- BindMutualAid / UnbindMutualAid ---------------------------------------------------------


def test_bind_replay_and_reuse(hebei, rdb):
    s = hebei.stub
    helper, member = enroll(s), enroll(s, itype=RESIDENT, birth="20150101")
    req = pb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=helper, member_id_number=member,
                                  relation=cpb.RELATION_CHILD)
    first = s.BindMutualAid(req)
    assert first.binding.active and first.binding.helper_id_number == helper
    _replays_identically(rdb, s.BindMutualAid, req, first)
    assert rdb.zcard(f"reg:13:{{bind}}:h:{helper}") == 1
    assert rdb.get("reg:13:{bind}:seq") == b"1"

    changed = pb.BindMutualAidRequest()
    changed.CopyFrom(req)
    changed.relation = cpb.RELATION_GRANDCHILD
    _reused(rdb, lambda: s.BindMutualAid(changed))
    changed.relation = cpb.RELATION_CHILD
    changed.member_verification.CopyFrom(FACE)
    _reused(rdb, lambda: s.BindMutualAid(changed))
    # The same bind under a new id is ALREADY_BOUND (a real conflict, not a replay) and writes nothing.
    again = pb.BindMutualAidRequest()
    again.CopyFrom(req)
    again.request_id = rid("bind")
    before = snapshot(rdb)
    _fails(lambda: s.BindMutualAid(again), grpc.StatusCode.ALREADY_EXISTS, "ALREADY_BOUND")
    assert snapshot(rdb) == before


def test_refused_bind_member_not_insured_then_enrolled(hebei, rdb):
    s = hebei.stub
    helper = enroll(s)
    member = new_id(birth="20160505")
    req = pb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=helper, member_id_number=member,
                                  relation=cpb.RELATION_CHILD)
    before = snapshot(rdb)
    _fails(lambda: s.BindMutualAid(req), grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_NOT_INSURED")
    assert snapshot(rdb) == before
    s.EnrollPerson(_enroll_req(member, itype=cpb.INSURANCE_TYPE_RESIDENT))
    resp = s.BindMutualAid(req)
    assert resp.binding.member_id_number == member and resp.binding.active
    assert s.BindMutualAid(req) == resp


def test_refused_bind_member_limit_then_slot_freed(hebei, rdb):
    """A refusal from inside the bind Lua script (MEMBER_LIMIT_REACHED, 河北 8) writes nothing either."""
    s = hebei.stub
    helper = enroll(s)
    members = [enroll(s, itype=RESIDENT, birth="20150101") for _ in range(9)]
    for m in members[:8]:
        bind(s, helper, m)
    req = pb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=helper,
                                  member_id_number=members[8], relation=cpb.RELATION_CHILD)
    before = snapshot(rdb)
    _fails(lambda: s.BindMutualAid(req), grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_LIMIT_REACHED")
    assert snapshot(rdb) == before
    s.UnbindMutualAid(pb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=helper,
                                                member_id_number=members[0]))
    resp = s.BindMutualAid(req)
    assert resp.binding.member_id_number == members[8] and resp.binding.seq == 9
    assert rdb.zcard(f"reg:13:{{bind}}:h:{helper}") == 8


def test_refused_bind_helper_suspended_then_reactivated(hebei, rdb):
    s = hebei.stub
    helper, member = enroll(s), enroll(s, birth="19900101")
    _status(s, helper, cpb.PERSON_STATUS_SUSPENDED)
    req = pb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=helper, member_id_number=member,
                                  relation=cpb.RELATION_SPOUSE, member_verification=FACE)
    before = snapshot(rdb)
    _fails(lambda: s.BindMutualAid(req), grpc.StatusCode.FAILED_PRECONDITION, "HELPER_NOT_ACTIVE")
    assert snapshot(rdb) == before
    _status(s, helper, cpb.PERSON_STATUS_ACTIVE)
    assert s.BindMutualAid(req).binding.active


def test_unbind_replay_and_reuse(hebei, rdb):
    s = hebei.stub
    helper = enroll(s)
    m1, m2 = enroll(s, itype=RESIDENT, birth="20150101"), enroll(s, itype=RESIDENT, birth="20150101")
    bind(s, helper, m1)
    bind(s, helper, m2)
    req = pb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=helper, member_id_number=m1)
    first = s.UnbindMutualAid(req)
    assert not first.binding.active and first.binding.end_reason == "UNBOUND"
    _replays_identically(rdb, s.UnbindMutualAid, req, first)
    # Rebinding, then replaying the old unbind id, must not end the new binding.
    bind(s, helper, m1)
    assert s.UnbindMutualAid(req) == first
    listed = s.ListBindings(pb.ListBindingsRequest(id_number=helper))
    assert sorted(b.member_id_number for b in listed.as_helper) == sorted([m1, m2])

    other = pb.UnbindMutualAidRequest(request_id=req.request_id, helper_id_number=helper, member_id_number=m2)
    _reused(rdb, lambda: s.UnbindMutualAid(other))
    assert len(s.ListBindings(pb.ListBindingsRequest(id_number=helper)).as_helper) == 2


def test_refused_unbind_then_bound(hebei, rdb):
    s = hebei.stub
    helper, member = enroll(s), enroll(s, itype=RESIDENT, birth="20150101")
    req = pb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=helper, member_id_number=member)
    before = snapshot(rdb)
    _fails(lambda: s.UnbindMutualAid(req), grpc.StatusCode.NOT_FOUND, "BINDING_NOT_FOUND")
    assert snapshot(rdb) == before
    bind(s, helper, member)
    assert s.UnbindMutualAid(req).binding.end_reason == "UNBOUND"


# --- BindProxy ------------------------------------------------------------------------------


def test_bind_proxy_replay_reuse_and_refusal(hebei, rdb):
    s = hebei.stub
    holder, relative = enroll(s), enroll(s, itype=RESIDENT, birth="19500101")
    _status(s, relative, cpb.PERSON_STATUS_SUSPENDED)
    req = pb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=holder, relative_id_number=relative,
                              relation=cpb.RELATION_PARENT, relative_verification=FACE)
    before = snapshot(rdb)
    _fails(lambda: s.BindProxy(req), grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_NOT_INSURED")
    assert snapshot(rdb) == before
    _status(s, relative, cpb.PERSON_STATUS_ACTIVE)
    first = s.BindProxy(req)
    assert first.proxy.relative_id_number == relative and first.proxy.relation == cpb.RELATION_PARENT
    _replays_identically(rdb, s.BindProxy, req, first)
    assert rdb.hlen(f"nat:{{proxy}}:ph:{holder}") == 1  # 亲情账户 are national (SPEC §5b)

    changed = pb.BindProxyRequest()
    changed.CopyFrom(req)
    changed.relation = cpb.RELATION_GRANDPARENT
    _reused(rdb, lambda: s.BindProxy(changed))
    changed.request_id = rid("proxy")
    before = snapshot(rdb)
    _fails(lambda: s.BindProxy(changed), grpc.StatusCode.ALREADY_EXISTS, "ALREADY_BOUND")
    assert snapshot(rdb) == before


# --- UpdatePersonStatus ----------------------------------------------------------------------


def test_status_replay_has_one_effect(hebei, rdb):
    s = hebei.stub
    helper, member = enroll(s), enroll(s, itype=RESIDENT, birth="20150101")
    bind(s, helper, member)
    req = pb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=helper,
                                       status=cpb.PERSON_STATUS_SUSPENDED)
    first = s.UpdatePersonStatus(req)
    assert first.person.status == cpb.PERSON_STATUS_SUSPENDED
    _replays_identically(rdb, s.UpdatePersonStatus, req, first)
    # Reactivated under another id: replaying the suspension answers as before and changes nothing.
    _status(s, helper, cpb.PERSON_STATUS_ACTIVE)
    assert s.UpdatePersonStatus(req) == first
    assert s.GetPerson(pb.GetPersonRequest(id_number=helper)).person.status == cpb.PERSON_STATUS_ACTIVE

    changed = pb.UpdatePersonStatusRequest(request_id=req.request_id, id_number=helper,
                                           status=cpb.PERSON_STATUS_TERMINATED)
    _reused(rdb, lambda: s.UpdatePersonStatus(changed))
    assert s.GetPerson(pb.GetPersonRequest(id_number=helper)).person.status == cpb.PERSON_STATUS_ACTIVE

    # Termination ends the binding once; its replay reports the same ended binding.
    term = pb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=helper,
                                        status=cpb.PERSON_STATUS_TERMINATED)
    t1 = s.UpdatePersonStatus(term)
    assert [b.end_reason for b in t1.ended_bindings] == ["HELPER_TERMINATED"]
    _replays_identically(rdb, s.UpdatePersonStatus, term, t1)


def test_refused_status_unknown_person_then_enrolled(hebei, rdb):
    s = hebei.stub
    pid = new_id()
    req = pb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=pid, status=cpb.PERSON_STATUS_SUSPENDED)
    before = snapshot(rdb)
    _fails(lambda: s.UpdatePersonStatus(req), grpc.StatusCode.NOT_FOUND, "PERSON_NOT_FOUND")
    assert snapshot(rdb) == before
    s.EnrollPerson(_enroll_req(pid))
    assert s.UpdatePersonStatus(req).person.status == cpb.PERSON_STATUS_SUSPENDED


# --- Settle / ReverseSettlement --------------------------------------------------------------


@pytest.fixture
def family(hebei):
    """An employee patient with a small own balance, and a helper with plenty."""
    s = hebei.stub
    patient, helper = enroll(s, birth="19950101"), enroll(s)
    credit(s, patient, 3_000)
    credit(s, helper, 50_000)
    bind(s, helper, patient, relation=cpb.RELATION_CHILD)
    return s, patient, helper


def test_settle_replay_has_one_effect(family, rdb):
    s, patient, helper = family
    req = settle_request(patient, 10_000)
    first = s.Settle(req)
    r = first.result
    assert (r.acct_pay_fen, r.mulaid_pay_fen, r.cash_pay_fen, r.helper_id_number) == (3_000, 7_000, 0, helper)
    _replays_identically(rdb, s.Settle, req, first)
    assert (balance(s, patient), balance(s, helper)) == (0, 43_000)
    # After more money moves, the replay still returns the first answer and moves nothing.
    credit(s, patient, 1_000)
    settle(s, patient, 500)
    assert s.Settle(req) == first
    assert (balance(s, patient), balance(s, helper)) == (500, 43_000)
    assert [e["ref"] for e in _ledger(rdb, helper)].count(req.request_id) == 1
    assert [e["ref"] for e in _ledger(rdb, patient)].count(req.request_id) == 1
    assert total_balances(rdb) == 3_000 + 50_000 + 1_000 - 10_000 - 500

    for field, value in (("amount_fen", 10_001), ("use_account", False),
                         ("category", cpb.CATEGORY_PHARMACY), ("institution_code", "H13010100002")):
        changed = pb.SettleRequest()
        changed.CopyFrom(req)
        setattr(changed, field, value)
        _reused(rdb, lambda changed=changed: s.Settle(changed))
    assert (balance(s, patient), balance(s, helper)) == (500, 43_000)


def test_refused_settle_writes_nothing_and_resend_succeeds(family, rdb):
    s, patient, helper = family
    _status(s, patient, cpb.PERSON_STATUS_SUSPENDED)
    req = settle_request(patient, 10_000)
    before = snapshot(rdb)
    _fails(lambda: s.Settle(req), grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_NOT_INSURED")
    assert snapshot(rdb) == before  # no claim, no record, no money, not even the lock's fence counter
    _status(s, patient, cpb.PERSON_STATUS_ACTIVE)
    r = s.Settle(req).result
    assert (r.acct_pay_fen, r.mulaid_pay_fen) == (3_000, 7_000)

    # A category accounts may never pay: refused before anything is touched.
    bad = settle_request(patient, 100, category=cpb.CATEGORY_FITNESS)
    before = snapshot(rdb)
    _fails(lambda: s.Settle(bad), grpc.StatusCode.FAILED_PRECONDITION, "CATEGORY_NOT_PAYABLE")
    assert snapshot(rdb) == before


def test_reverse_replay_has_one_effect(family, rdb):
    s, patient, helper = family
    sid = settle(s, patient, 10_000).settlement_id
    req = pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=sid)
    first = s.ReverseSettlement(req)
    assert (first.acct_refund_fen, first.mulaid_refund_fen, first.helper_id_number) == (3_000, 7_000, helper)
    assert (first.balance_after_fen, first.helper_balance_after_fen) == (3_000, 50_000)
    _replays_identically(rdb, s.ReverseSettlement, req, first)
    assert (balance(s, patient), balance(s, helper)) == (3_000, 50_000)

    # A second reversal under another id is refused: the money came back once.
    before = snapshot(rdb)
    _fails(lambda: s.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=sid)),
           grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_REVERSED")
    assert snapshot(rdb) == before
    # The same id for another settlement: reused.
    sid2 = settle(s, patient, 1_000).settlement_id
    _reused(rdb, lambda: s.ReverseSettlement(pb.ReverseSettlementRequest(request_id=req.request_id,
                                                                         settlement_id=sid2)))
    assert (balance(s, patient), balance(s, helper)) == (2_000, 50_000)
    assert s.GetSettlement(pb.GetSettlementRequest(settlement_id=sid)).result.state == "REVERSED"
    assert s.GetSettlement(pb.GetSettlementRequest(settlement_id=sid2)).result.state == "SETTLED"
    kinds = [e["kind"] for e in _ledger(rdb, helper) if e["ref"] == sid]
    assert kinds == ["SETTLE_HELPER", "REVERSE_HELPER"]


def test_refused_reverse_unknown_settlement_then_settled(family, rdb):
    s, patient, helper = family
    sid = rid("settle")
    req = pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=sid)
    before = snapshot(rdb)
    _fails(lambda: s.ReverseSettlement(req), grpc.StatusCode.NOT_FOUND, "SETTLEMENT_NOT_FOUND")
    assert snapshot(rdb) == before
    settle(s, patient, 4_000, request_id=sid)
    assert (balance(s, patient), balance(s, helper)) == (0, 49_000)
    resp = s.ReverseSettlement(req)
    assert (resp.acct_refund_fen, resp.mulaid_refund_fen) == (3_000, 1_000)
    assert (balance(s, patient), balance(s, helper)) == (3_000, 50_000)


# --- transfer steps (called by the national wallet, keyed by transfer_id / return_id) ----------


def test_transfer_debit_replay_reuse_and_refusal(hebei, rdb):
    s = hebei.stub
    sender = enroll(s)
    credit(s, sender, 5_000)
    req = pb.DebitForTransferRequest(transfer_id=rid("xfer"), sender_id_number=sender, amount_fen=8_000,
                                     recipient_province="11")
    before = snapshot(rdb)
    _fails(lambda: s.DebitForTransfer(req), grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_BALANCE")
    assert snapshot(rdb) == before
    credit(s, sender, 5_000)
    first = s.DebitForTransfer(req)
    assert (first.balance_after_fen, first.replayed) == (2_000, False)
    for _ in range(3):
        assert s.DebitForTransfer(req).replayed is True
    assert balance(s, sender) == 2_000
    assert [e["ref"] for e in _ledger(rdb, sender)].count(req.transfer_id) == 1

    changed = pb.DebitForTransferRequest()
    changed.CopyFrom(req)
    changed.amount_fen = 1_000
    _reused(rdb, lambda: s.DebitForTransfer(changed))
    assert balance(s, sender) == 2_000


def test_lot_return_replay_and_reuse(hebei, rdb):
    s = hebei.stub
    sender = enroll(s)
    req = pb.CreditLotReturnRequest(return_id=rid("lot"), sender_id_number=sender, amount_fen=700,
                                    transfer_id=rid("xfer"))
    assert s.CreditLotReturn(req).balance_after_fen == 700
    for _ in range(3):
        assert s.CreditLotReturn(req).replayed is True
    assert balance(s, sender) == 700
    changed = pb.CreditLotReturnRequest()
    changed.CopyFrom(req)
    changed.amount_fen = 701
    _reused(rdb, lambda: s.CreditLotReturn(changed))
    assert balance(s, sender) == 700
