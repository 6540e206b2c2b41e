"""Every registry write is safe to retry (a reply lost after the script ran), the registry
finds a member insured elsewhere by itself, and lot returns keep their transfer.

A lost reply is simulated exactly as it happens: the request ran to the end, then its claim is put
back to PENDING without its answer (as if the process died before recording it), and the same
request is sent again. The resend must recognise its own earlier effect and finish, not refuse.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import redis
from medaid.common.idempotency import fingerprint
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
    snapshot,
)


def lose_reply(rdb: redis.Redis, reg: Any, request_id: str) -> None:
    """The request's effects stay; its claim goes back to PENDING with no answer recorded."""
    key = reg.idem.key(request_id)
    assert rdb.hget(key, "state") == b"DONE"
    rdb.hset(key, "state", "PENDING")
    rdb.hdel(key, "resp", "err")


def enroll_request(pid: str, itype: int = cpb.INSURANCE_TYPE_EMPLOYEE) -> pb.EnrollPersonRequest:
    return pb.EnrollPersonRequest(request_id=rid("enroll"), id_number=pid, name="王五", insurance_type=itype,
                                  pooling_region="130100")


def test_enroll_resent_after_its_reply_was_lost_finishes_the_rest(hebei, rdb):
    s, reg = hebei.stub, hebei.registry
    pid = new_id()
    req = enroll_request(pid)
    first = s.EnrollPerson(req).person
    lose_reply(rdb, reg, req.request_id)
    # As if the process died after the script: the province index and the national directory lack it
    # (the directory's entry and the status version it was told with).
    rdb.srem(reg.k.people_index(), pid)
    rdb.delete(f"dir:{{psn:{pid}}}", f"dir:{{psn:{pid}}}:sv")
    again = s.EnrollPerson(req).person
    assert again == first
    assert rdb.sismember(reg.k.people_index(), pid)
    assert rdb.hget(f"dir:{{psn:{pid}}}", "province") == b"13"
    assert rdb.hget(reg.idem.key(req.request_id), "state") == b"DONE"
    # Another request for the same person is still refused.
    with pytest.raises(grpc.RpcError) as err:
        s.EnrollPerson(enroll_request(pid))
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_ENROLLED")


def enrolment_stopped_after_the_person(stub: Any, registry: Any, req: pb.EnrollPersonRequest) -> None:
    """The enrolment fails as a registry that stops once the person is written (before the province
    index and the national directory) would leave it."""
    def stop(point: str) -> None:
        if point == "enroll.after_person":
            raise RuntimeError(point)

    registry.fault_hook = stop
    try:
        with pytest.raises(grpc.RpcError):
            stub.EnrollPerson(req)
    finally:
        registry.fault_hook = None


def test_an_enrolment_stopped_after_the_person_is_written_is_finished_by_recovery(hebei, rdb, loop_thread):
    """No half-done enrolment outlives recovery: a registry that stops once the person is written,
    before the province index and the national directory, leaves a recovery entry the loop finishes
    without any resend; the resend then answers as a clean enrolment would."""
    s, reg = hebei.stub, hebei.registry
    pid = new_id()
    req = enroll_request(pid)

    enrolment_stopped_after_the_person(s, reg, req)
    assert rdb.exists(reg.k.person(pid)) and not rdb.sismember(reg.k.people_index(), pid)
    assert not rdb.exists(f"dir:{{psn:{pid}}}")
    reg.clock.advance(60_000)
    assert loop_thread.run(reg.recover()).lifecycle == 1
    assert rdb.sismember(reg.k.people_index(), pid)
    assert rdb.hget(f"dir:{{psn:{pid}}}", "province") == b"13"
    assert not rdb.zcard(reg.k.open_settlements())
    assert s.EnrollPerson(req).person.status == cpb.PERSON_STATUS_ACTIVE
    # An enrolment refused (the person is enrolled already) leaves no entry behind.
    with pytest.raises(grpc.RpcError) as err:
        s.EnrollPerson(enroll_request(pid))
    assert reason(err.value) == "ALREADY_ENROLLED" and not rdb.zcard(reg.k.open_settlements())


def test_an_enrolment_finished_late_leaves_the_directory_where_the_person_went(start_registry, rdb, loop_thread):
    """Recovery finishing an enrolment after the person moved province tells the national directory
    the person as this province holds them now (moved away), not ACTIVE here: the directory keeps
    naming the province that enrolled them since, where 1101 and binding checks find them."""
    hebei, beijing = start_registry("13"), start_registry("11")
    s, reg = hebei.stub, hebei.registry
    pid = new_id()

    enrolment_stopped_after_the_person(s, reg, enroll_request(pid))
    s.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=pid,
                                                      status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"))
    beijing.stub.EnrollPerson(pb.EnrollPersonRequest(request_id=rid("enroll"), id_number=pid, name="王五",
                                                     insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
                                                     pooling_region="110000"))
    assert rdb.hget(f"dir:{{psn:{pid}}}", "province") == b"11"
    reg.clock.advance(60_000)
    assert loop_thread.run(reg.recover()).lifecycle >= 1
    assert rdb.sismember(reg.k.people_index(), pid) and not rdb.zcard(reg.k.open_settlements())
    assert rdb.hmget(f"dir:{{psn:{pid}}}", ["province", "status"]) == [b"11", b"ACTIVE"]


def test_a_recovery_entry_of_an_enrolment_that_wrote_nothing_is_dropped(hebei, rdb, loop_thread):
    """A request that wrote its entry and stopped before the person: the loop drops the entry and
    enrols no one."""
    reg, pid = hebei.registry, new_id()
    rdb.zadd(reg.k.open_settlements(), {f"E|{pid}|enroll|never-written|": 0})
    reg.clock.advance(60_000)
    assert loop_thread.run(reg.recover()).lifecycle == 1
    assert not rdb.zcard(reg.k.open_settlements()) and not rdb.exists(reg.k.person(pid))
    assert not rdb.sismember(reg.k.people_index(), pid) and not rdb.exists(f"dir:{{psn:{pid}}}")


def test_bind_resent_after_its_reply_was_lost_answers_the_binding(hebei, rdb):
    s, reg = hebei.stub, hebei.registry
    helper, member = enroll(s), enroll(s, itype=RESIDENT, birth="20150101")
    req = pb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=helper, member_id_number=member,
                                  relation=cpb.RELATION_CHILD)
    req.member_verification.CopyFrom(FACE)
    first = s.BindMutualAid(req).binding
    lose_reply(rdb, reg, req.request_id)
    before = snapshot(rdb)
    assert s.BindMutualAid(req).binding == first
    after = snapshot(rdb)
    changed = {k for k in after if after[k] != before.get(k)} | (before.keys() - after.keys())
    assert changed == {reg.idem.key(req.request_id).encode()}  # only the claim: DONE again
    # A new bind request for the same pair is still ALREADY_BOUND.
    with pytest.raises(grpc.RpcError) as err:
        bind(s, helper, member)
    assert reason(err.value) == "ALREADY_BOUND"


def test_unbind_resent_after_its_reply_was_lost_answers_the_ended_binding(hebei, rdb):
    s, reg = hebei.stub, hebei.registry
    helper, member = enroll(s), enroll(s, itype=RESIDENT, birth="20150101")
    bind(s, helper, member)
    req = pb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=helper, member_id_number=member)
    first = s.UnbindMutualAid(req).binding
    assert not first.active
    lose_reply(rdb, reg, req.request_id)
    assert s.UnbindMutualAid(req).binding == first
    with pytest.raises(grpc.RpcError) as err:  # another unbind finds nothing to end
        s.UnbindMutualAid(pb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=helper,
                                                    member_id_number=member))
    assert reason(err.value) == "BINDING_NOT_FOUND"


def test_proxy_bind_resent_after_its_reply_was_lost_answers_the_proxy(hebei, rdb):
    s, reg = hebei.stub, hebei.registry
    holder, relative = enroll(s), enroll(s, birth="19500101")
    req = pb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=holder, relative_id_number=relative,
                              relation=cpb.RELATION_PARENT, relative_verification=FACE)
    first = s.BindProxy(req).proxy
    lose_reply(rdb, reg, req.request_id)
    assert s.BindProxy(req).proxy == first
    with pytest.raises(grpc.RpcError) as err:
        s.BindProxy(pb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=holder,
                                        relative_id_number=relative, relation=cpb.RELATION_PARENT,
                                        relative_verification=FACE))
    assert reason(err.value) == "ALREADY_BOUND"


def test_settlement_found_without_its_claim(hebei, rdb):
    """Claims answer replays only: with every claim gone, GetSettlement and a reversal still find the
    settlement by its own index."""
    s = hebei.stub
    helper, member = enroll(s), enroll(s, itype=RESIDENT, birth="20150101")
    credit(s, helper, 10_000)
    bind(s, helper, member)
    res = s.Settle(pb.SettleRequest(request_id=rid("settle"), patient_id_number=member, amount_fen=4_000,
                                    use_account=True, category=cpb.CATEGORY_OUTPATIENT,
                                    institution_code="H13010100001")).result
    for key in rdb.scan_iter(match="reg:13:{rid:*"):
        rdb.delete(key)
    got = s.GetSettlement(pb.GetSettlementRequest(settlement_id=res.settlement_id)).result
    assert (got.mulaid_pay_fen, got.helper_id_number, got.state) == (4_000, helper, "SETTLED")
    rev = s.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=res.settlement_id))
    assert rev.mulaid_refund_fen == 4_000 and balance(s, helper) == 10_000


def test_a_final_refusal_on_a_resend_frees_the_request_id(hebei, rdb):
    """A resend refused after its first attempt crashed settles its claim: the same id with corrected
    fields is judged afresh, not IDEMPOTENCY_KEY_REUSED."""
    s, reg = hebei.stub, hebei.registry
    pid = new_id()
    req = pb.CreditAccountRequest(request_id=rid("credit"), id_number=pid, amount_fen=500,
                                  kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
    # The first attempt died after claiming: its claim is PENDING with this request's fingerprint.
    claim = reg.idem.key(req.request_id)
    rdb.hset(claim, mapping={"fp": fingerprint(req), "op": "credit", "subject": pid, "state": "PENDING", "at": 0})
    with pytest.raises(grpc.RpcError) as err:  # the resend: nobody is enrolled
        s.CreditAccount(req)
    assert reason(err.value) == "PERSON_NOT_FOUND"
    assert not rdb.exists(claim)
    s.EnrollPerson(enroll_request(pid))
    fixed = pb.CreditAccountRequest(request_id=req.request_id, id_number=pid, amount_fen=700,
                                    kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
    assert s.CreditAccount(fixed).balance_fen == 700


def test_bind_and_diagnose_find_a_member_insured_in_another_province(national, rdb):
    """The member is enrolled in 北京 only; 河北's registry finds that in the national person directory
    without the caller saying so: CROSS_PROVINCE (原因四), pointing to the wallet."""
    hebei = national.reg("13")
    beijing = national.reg("11")
    helper = enroll(hebei)
    credit(hebei, helper, 10_000)
    mother = enroll(beijing, itype=RESIDENT, birth="19550101", region="110000", division="110105")
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as err:
        bind(hebei, helper, mother, cpb.RELATION_PARENT)
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "CROSS_PROVINCE")
    assert "医保钱包" in err.value.details() or "wallet" in err.value.details()
    assert snapshot(rdb) == before
    d = hebei.Diagnose(pb.DiagnoseRequest(member_id_number=mother, helper_id_number=helper))
    assert not d.would_pay
    assert [f.code for f in d.findings][0] == "CROSS_PROVINCE"
    assert "MEMBER_NOT_INSURED" not in [f.code for f in d.findings]
    # Someone enrolled nowhere is still 原因一.
    nobody = new_id("130102", "19550101")
    d = hebei.Diagnose(pb.DiagnoseRequest(member_id_number=nobody, helper_id_number=helper))
    assert "MEMBER_NOT_INSURED" in [f.code for f in d.findings]


@pytest.mark.parametrize("transfer_id", ["", "x" * 65, "bad id!"])
def test_lot_return_needs_a_valid_transfer_id_and_writes_nothing(hebei, rdb, transfer_id):
    s = hebei.stub
    sender = enroll(s)
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as err:
        s.CreditLotReturn(pb.CreditLotReturnRequest(return_id=rid("ret"), sender_id_number=sender, amount_fen=100,
                                                    transfer_id=transfer_id))
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TRANSFER_ID")
    assert snapshot(rdb) == before


def test_lot_return_keeps_its_transfer_and_refuses_the_id_for_another(hebei, rdb):
    s, reg = hebei.stub, hebei.registry
    sender = enroll(s)
    ret = rid("ret")
    first = s.CreditLotReturn(pb.CreditLotReturnRequest(return_id=ret, sender_id_number=sender, amount_fen=300,
                                                        transfer_id="xfer-1"))
    assert (first.balance_after_fen, first.replayed) == (300, False)
    assert rdb.hget(reg.k.applied(sender), f"lotret|{ret}") == b"300|xfer-1"
    again = s.CreditLotReturn(pb.CreditLotReturnRequest(return_id=ret, sender_id_number=sender, amount_fen=300,
                                                        transfer_id="xfer-1"))
    assert (again.balance_after_fen, again.replayed) == (300, True)
    with pytest.raises(grpc.RpcError) as err:
        s.CreditLotReturn(pb.CreditLotReturnRequest(return_id=ret, sender_id_number=sender, amount_fen=300,
                                                    transfer_id="xfer-2"))
    assert reason(err.value) == "IDEMPOTENCY_KEY_REUSED"
    assert balance(s, sender) == 300


def test_the_same_settlement_sent_with_x_then_x_upper_is_one_request(hebei, rdb):
    """A direct gRPC caller resending one request id with the id number's check character once as `x`
    and once as `X`: the same request (one effect, the first answer), not IDEMPOTENCY_KEY_REUSED."""
    s = hebei.stub
    pid = ""
    while not pid.endswith("X"):
        pid = new_id()
    s.EnrollPerson(enroll_request(pid))
    credit(s, pid, 1_000)
    req = pb.SettleRequest(request_id=rid("settle"), patient_id_number=pid[:-1] + "x", amount_fen=400,
                           use_account=True, category=cpb.CATEGORY_OUTPATIENT, institution_code="H13010100001")
    first = s.Settle(req).result
    assert first.patient_id_number == pid
    req.patient_id_number = pid
    assert s.Settle(req).result == first
    assert balance(s, pid) == 600


def test_unbind_resent_after_a_rebind_leaves_the_new_binding(hebei, rdb):
    """An unbind whose reply was lost is resent after the helper bound the member again: the resend
    answers the binding it ended and leaves the new one active."""
    s, reg = hebei.stub, hebei.registry
    helper, member = enroll(s), enroll(s, itype=RESIDENT)
    bind(s, helper, member)
    req = pb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=helper, member_id_number=member)
    first = s.UnbindMutualAid(req).binding
    lose_reply(rdb, reg, req.request_id)
    again = bind(s, helper, member).binding
    assert s.UnbindMutualAid(req).binding == first
    now = s.ListBindings(pb.ListBindingsRequest(id_number=helper)).as_helper
    assert [(b.member_id_number, b.seq, b.active) for b in now if b.active] == [(member, again.seq, True)]
