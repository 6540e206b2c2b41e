"""SPEC §3 家庭共济 bindings through gRPC against a real Redis: every reason code, unbinding,
automatic ending, 亲情账户 proxy bindings and Diagnose (SPEC §4).

Every refusal asserts the gRPC status, the ErrorInfo reason and that Redis is byte-for-byte
unchanged by the refused call. "Today" is 2026-11-22 (Asia/Shanghai).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import redis
from conftest import policy_for
from medaid.common.errors import error_info
from medaid.common.names_zh import CATEGORY_ZH, STATUS_ZH
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as pb
from support import (
    FACE,
    FLEXIBLE,
    RESIDENT,
    balance,
    bind,
    credit,
    enroll,
    new_id,
    reason,
    rid,
    settle,
    snapshot,
)

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

GANSU_REGION = "620100"
GANSU_DIVISION = "620102"


# --- helpers -------------------------------------------------------------------------------


def refused(rdb: redis.Redis, call: Callable[[], Any], code: grpc.StatusCode, why: str) -> grpc.RpcError:
    """Run a call that must fail with `code`/`why` and must leave Redis exactly as it was."""
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        call()
    exc = ei.value
    assert exc.code() == code, (exc.code(), exc.details())
    assert reason(exc) == why, exc.details()
    assert snapshot(rdb) == before, f"refused {why} wrote to Redis"
    return exc


def set_status(stub: Any, pid: str, status: int, moved_to: str = "") -> pb.UpdatePersonStatusResponse:
    return stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=pid, status=status, moved_to_province=moved_to))


def bindings(stub: Any, pid: str, include_ended: bool = False) -> pb.ListBindingsResponse:
    return stub.ListBindings(pb.ListBindingsRequest(id_number=pid, include_ended=include_ended))


def unbind(stub: Any, helper: str, member: str) -> pb.UnbindMutualAidResponse:
    return stub.UnbindMutualAid(pb.UnbindMutualAidRequest(
        request_id=rid("unbind"), helper_id_number=helper, member_id_number=member))


def diagnose(stub: Any, member: str, helper: str, **kw: Any) -> pb.DiagnoseResponse:
    return stub.Diagnose(pb.DiagnoseRequest(member_id_number=member, helper_id_number=helper, **kw))


def codes(resp: pb.DiagnoseResponse) -> list[str]:
    return [f.code for f in resp.findings]


def active_members(stub: Any, helper: str) -> list[str]:
    return [b.member_id_number for b in bindings(stub, helper).as_helper]


# 甘肃 runs the pooled model; its exclusivity and member cap are exercised on bindings with a
# bind-and-deduct copy of its policy.
GANSU_BOUND = dataclasses.replace(policy_for("62"), model="BIND_AND_DEDUCT")


def gansu_person(stub: Any, **kw: Any) -> str:
    return enroll(stub, region=GANSU_REGION, division=GANSU_DIVISION, **kw)


# --- the happy path ------------------------------------------------------------------------


def test_bind_employee_to_resident_child_creates_active_binding(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    b = bind(stub, helper, member, cpb.RELATION_CHILD).binding
    assert (b.helper_id_number, b.member_id_number) == (helper, member)
    assert b.relation == cpb.RELATION_CHILD
    assert b.active is True and b.end_reason == "" and b.seq >= 1
    assert b.bound_at_unix_ms == hebei.clock.now_ms()
    listed = bindings(stub, member)
    assert [x.helper_id_number for x in listed.as_member] == [helper]
    assert list(listed.as_helper) == []
    assert active_members(stub, helper) == [member]


# --- HELPER_NOT_EMPLOYEE -------------------------------------------------------------------


def test_helper_not_employee_resident_helper(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub, itype=RESIDENT)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    refused(rdb, lambda: bind(stub, helper, member), FAILED_PRECONDITION, "HELPER_NOT_EMPLOYEE")
    assert active_members(stub, helper) == []


def test_helper_not_employee_flexible_tier1_helper(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub, itype=FLEXIBLE, tier=1)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    refused(rdb, lambda: bind(stub, helper, member), FAILED_PRECONDITION, "HELPER_NOT_EMPLOYEE")


def test_helper_not_employee_does_not_apply_to_flexible_tier2(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub, itype=FLEXIBLE, tier=2)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    b = bind(stub, helper, member).binding
    assert b.active and b.helper_id_number == helper
    assert active_members(stub, helper) == [member]


# --- HELPER_NOT_ACTIVE / HELPER_NOT_INSURED / MEMBER_NOT_INSURED ---------------------------


@pytest.mark.parametrize("status", [cpb.PERSON_STATUS_SUSPENDED, cpb.PERSON_STATUS_TERMINATED],
                         ids=["suspended", "terminated"])
def test_helper_not_active(hebei, rdb, status):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    set_status(stub, helper, status)
    refused(rdb, lambda: bind(stub, helper, member), FAILED_PRECONDITION, "HELPER_NOT_ACTIVE")


def test_helper_not_insured_when_helper_not_enrolled(hebei, rdb):
    stub = hebei.stub
    helper = new_id()
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    refused(rdb, lambda: bind(stub, helper, member), FAILED_PRECONDITION, "HELPER_NOT_INSURED")


def test_member_not_insured_when_member_not_enrolled(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = new_id(birth="20150101")
    refused(rdb, lambda: bind(stub, helper, member), FAILED_PRECONDITION, "MEMBER_NOT_INSURED")


@pytest.mark.parametrize("status", [cpb.PERSON_STATUS_SUSPENDED, cpb.PERSON_STATUS_TERMINATED],
                         ids=["suspended", "terminated"])
def test_member_not_insured_when_member_not_active(hebei, rdb, status):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    set_status(stub, member, status)
    refused(rdb, lambda: bind(stub, helper, member), FAILED_PRECONDITION, "MEMBER_NOT_INSURED")


# --- RELATION_NOT_ALLOWED ------------------------------------------------------------------


@pytest.mark.parametrize("relation", [cpb.RELATION_PARENT_IN_LAW, cpb.RELATION_CHILD_IN_LAW,
                                      cpb.RELATION_SIBLING_IN_LAW],
                         ids=["parent_in_law", "child_in_law", "sibling_in_law"])
def test_relation_not_allowed_in_law(hebei, rdb, relation):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="19550101")
    refused(rdb, lambda: bind(stub, helper, member, relation), FAILED_PRECONDITION, "RELATION_NOT_ALLOWED")


def test_relation_not_allowed_outside_province_base_set(start_registry, rdb):
    base_only = dataclasses.replace(policy_for("13"), relations=frozenset({"SPOUSE", "PARENT", "CHILD"}))
    stub = start_registry("13", policy=base_only).stub
    helper = enroll(stub)
    sibling = enroll(stub, itype=RESIDENT, birth="19850101")
    refused(rdb, lambda: bind(stub, helper, sibling, cpb.RELATION_SIBLING), FAILED_PRECONDITION,
            "RELATION_NOT_ALLOWED")
    # The base set itself still binds under that policy.
    parent = enroll(stub, itype=RESIDENT, birth="19550101")
    assert bind(stub, helper, parent, cpb.RELATION_PARENT).binding.active


def test_default_policy_allows_every_extended_relation(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    extended = [cpb.RELATION_SIBLING, cpb.RELATION_GRANDPARENT, cpb.RELATION_MATERNAL_GRANDPARENT,
                cpb.RELATION_GRANDCHILD, cpb.RELATION_MATERNAL_GRANDCHILD]
    for relation in extended:
        member = enroll(stub, itype=RESIDENT, birth="19700101")
        assert bind(stub, helper, member, relation).binding.relation == relation
    assert len(active_members(stub, helper)) == len(extended)


# --- MEMBER_LIMIT_REACHED ------------------------------------------------------------------


def test_member_limit_reached_hebei_ninth_member_fails(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    members = [enroll(stub, itype=RESIDENT, birth="20150101") for _ in range(9)]
    for m in members[:8]:
        bind(stub, helper, m)
    refused(rdb, lambda: bind(stub, helper, members[8]), FAILED_PRECONDITION, "MEMBER_LIMIT_REACHED")
    assert sorted(active_members(stub, helper)) == sorted(members[:8])


def test_member_limit_reached_gansu_eighth_member_fails(start_registry, rdb):
    stub = start_registry("62", policy=GANSU_BOUND).stub
    helper = gansu_person(stub)
    members = [gansu_person(stub, itype=RESIDENT, birth="20150101") for _ in range(8)]
    for m in members[:7]:
        bind(stub, helper, m)
    refused(rdb, lambda: bind(stub, helper, members[7]), FAILED_PRECONDITION, "MEMBER_LIMIT_REACHED")
    assert len(active_members(stub, helper)) == 7


def test_unbinding_frees_a_slot_under_the_member_limit(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    members = [enroll(stub, itype=RESIDENT, birth="20150101") for _ in range(9)]
    for m in members[:8]:
        bind(stub, helper, m)
    refused(rdb, lambda: bind(stub, helper, members[8]), FAILED_PRECONDITION, "MEMBER_LIMIT_REACHED")
    unbind(stub, helper, members[0])
    assert bind(stub, helper, members[8]).binding.active
    assert sorted(active_members(stub, helper)) == sorted(members[1:])


# --- DIFFERENT_POOLING_REGION --------------------------------------------------------------


def test_different_pooling_region_refused_when_policy_forbids(start_registry, rdb):
    no_cross = dataclasses.replace(policy_for("13"), cross_region_allowed=False)
    stub = start_registry("13", policy=no_cross).stub
    helper = enroll(stub, region="130100")
    member = enroll(stub, itype=RESIDENT, region="130200", birth="20150101")
    refused(rdb, lambda: bind(stub, helper, member), FAILED_PRECONDITION, "DIFFERENT_POOLING_REGION")
    # Diagnosis names the same reason, and writes nothing.
    before = snapshot(rdb)
    d = diagnose(stub, member, helper)
    assert (d.would_pay, codes(d)) == (False, ["DIFFERENT_POOLING_REGION", "NOT_BOUND", "HELPER_ZERO_BALANCE"])
    assert snapshot(rdb) == before
    # Same 统筹区 still binds under that policy.
    local = enroll(stub, itype=RESIDENT, region="130100", birth="20150101")
    assert bind(stub, helper, local).binding.active


def test_different_pooling_region_allowed_by_default_in_hebei(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub, region="130100")
    member = enroll(stub, itype=RESIDENT, region="130200", birth="20150101")
    b = bind(stub, helper, member).binding
    assert b.active and b.member_id_number == member


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "staged"])
def test_a_policy_switched_to_no_cross_region_lets_no_helper_of_another_region_pay(start_registry, rdb, atomic):
    """Bindings filed across 统筹区 while 河北 allowed it; the province then turns cross-region 共济
    off (the registry restarts with the new policy file). The bindings stay (nothing ended them) but
    cross-region 共济 cannot happen: Diagnose says so, and PreSettle and Settle agree with it — the
    helper of the other 统筹区 pays nothing (DIFFERENT_POOLING_REGION) and one of the patient's own
    统筹区 still pays."""
    allowed = start_registry("13").stub
    far, near = enroll(allowed, region="130100"), enroll(allowed, region="130200", birth="19790101")
    member = enroll(allowed, itype=RESIDENT, region="130200", birth="20150101")
    credit(allowed, far, 50_000)
    bind(allowed, far, member)
    running = start_registry("13", policy=dataclasses.replace(policy_for("13"), cross_region_allowed=False))
    running.registry.atomic = atomic
    stub = running.stub
    d = diagnose(stub, member, far)
    assert (d.would_pay, codes(d)) == (False, ["DIFFERENT_POOLING_REGION"])
    req = dict(patient_id_number=member, amount_fen=2_000, use_account=True, category=cpb.CATEGORY_OUTPATIENT,
               institution_code="H13020100001", institution_admdvs="130200")
    pre = stub.PreSettle(pb.PreSettleRequest(**req)).result
    res = stub.Settle(pb.SettleRequest(request_id=rid("2207"), **req)).result
    for r in (pre, res):
        assert (r.mulaid_pay_fen, r.cash_pay_fen, r.helper_reason) == (0, 2_000, "DIFFERENT_POOLING_REGION")
    assert balance(stub, far) == 50_000
    # A helper of the member's own 统筹区 still pays; the far one is passed over, whatever its balance.
    credit(stub, near, 3_000)
    bind(stub, near, member)
    pre = stub.PreSettle(pb.PreSettleRequest(**req)).result
    res = stub.Settle(pb.SettleRequest(request_id=rid("2207"), **req)).result
    for r in (pre, res):
        assert [(c.helper_id_number, c.amount_fen) for c in r.helper_charges] == [(near, 2_000)]
        assert (r.cash_pay_fen, r.helper_reason) == (0, "")
    assert (balance(stub, far), balance(stub, near)) == (50_000, 1_000)


# --- CROSS_PROVINCE ------------------------------------------------------------------------


def _assert_points_to_wallet(exc: grpc.RpcError, province: str) -> None:
    info = error_info(exc)
    assert info is not None and info.domain == "medaid"
    assert info.metadata["use"] == "WALLET_TRANSFER"
    assert info.metadata["member_province"] == province
    assert "医保钱包" in exc.details()


def test_cross_province_member_moved_to_another_province(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="19550101")
    moved = set_status(stub, member, cpb.PERSON_STATUS_TERMINATED, moved_to="11")
    assert moved.person.moved_to_province == "11"
    exc = refused(rdb, lambda: bind(stub, helper, member, cpb.RELATION_PARENT), FAILED_PRECONDITION,
                  "CROSS_PROVINCE")
    _assert_points_to_wallet(exc, "11")


def test_cross_province_member_insured_admdvs_elsewhere(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="19550101")
    exc = refused(rdb, lambda: bind(stub, helper, member, cpb.RELATION_PARENT, member_insured_admdvs="110000"),
                  FAILED_PRECONDITION, "CROSS_PROVINCE")
    _assert_points_to_wallet(exc, "11")
    # An in-province insured admdvs is no obstacle.
    assert bind(stub, helper, member, cpb.RELATION_PARENT, member_insured_admdvs="130200").binding.active


def test_cross_province_member_not_enrolled_here_but_insured_elsewhere(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = new_id("110105", "19550101")
    exc = refused(rdb, lambda: bind(stub, helper, member, cpb.RELATION_PARENT, member_insured_admdvs="110000"),
                  FAILED_PRECONDITION, "CROSS_PROVINCE")
    _assert_points_to_wallet(exc, "11")


# --- REVERSE_BINDING -----------------------------------------------------------------------


def test_reverse_binding(hebei, rdb):
    stub = hebei.stub
    a = enroll(stub)
    b = enroll(stub, birth="19820101")
    bind(stub, a, b, cpb.RELATION_SPOUSE)
    refused(rdb, lambda: bind(stub, b, a, cpb.RELATION_SPOUSE), FAILED_PRECONDITION, "REVERSE_BINDING")
    assert active_members(stub, b) == []
    # Once A unbinds, B may bind A.
    unbind(stub, a, b)
    assert bind(stub, b, a, cpb.RELATION_SPOUSE).binding.active


# --- ALREADY_IN_ANOTHER_RELATION (甘肃 exclusive) --------------------------------------------


def test_already_in_another_relation_member_already_has_a_helper(start_registry, rdb):
    stub = start_registry("62", policy=GANSU_BOUND).stub
    h1, h2 = gansu_person(stub), gansu_person(stub, birth="19820101")
    member = gansu_person(stub, itype=RESIDENT, birth="20150101")
    bind(stub, h1, member)
    refused(rdb, lambda: bind(stub, h2, member), FAILED_PRECONDITION, "ALREADY_IN_ANOTHER_RELATION")
    assert [b.helper_id_number for b in bindings(stub, member).as_member] == [h1]


def test_already_in_another_relation_helper_is_a_member_elsewhere(start_registry, rdb):
    stub = start_registry("62", policy=GANSU_BOUND).stub
    grandparent = gansu_person(stub, birth="19500101")
    helper = gansu_person(stub)
    member = gansu_person(stub, itype=RESIDENT, birth="20150101")
    bind(stub, grandparent, helper, cpb.RELATION_CHILD)
    refused(rdb, lambda: bind(stub, helper, member), FAILED_PRECONDITION, "ALREADY_IN_ANOTHER_RELATION")


def test_already_in_another_relation_member_is_a_helper(start_registry, rdb):
    stub = start_registry("62", policy=GANSU_BOUND).stub
    helper = gansu_person(stub, birth="19500101")
    member = gansu_person(stub)
    grandchild = gansu_person(stub, itype=RESIDENT, birth="20150101")
    bind(stub, member, grandchild, cpb.RELATION_CHILD)
    refused(rdb, lambda: bind(stub, helper, member, cpb.RELATION_CHILD), FAILED_PRECONDITION,
            "ALREADY_IN_ANOTHER_RELATION")


def test_exclusive_province_helper_may_still_have_several_members(start_registry, rdb):
    stub = start_registry("62", policy=GANSU_BOUND).stub
    helper = gansu_person(stub)
    kids = [gansu_person(stub, itype=RESIDENT, birth="20150101") for _ in range(3)]
    for k in kids:
        bind(stub, helper, k)
    assert sorted(active_members(stub, helper)) == sorted(kids)


def test_hebei_allows_a_member_with_two_helpers(hebei, rdb):
    stub = hebei.stub
    mother, father = enroll(stub, birth="19820101"), enroll(stub)
    child = enroll(stub, itype=RESIDENT, birth="20150101")
    bind(stub, mother, child)
    bind(stub, father, child)
    assert sorted(b.helper_id_number for b in bindings(stub, child).as_member) == sorted([mother, father])


# --- VERIFICATION_REQUIRED -----------------------------------------------------------------


def test_verification_required_for_adult_member_without_attestation(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="19550101")
    refused(rdb, lambda: bind(stub, helper, member, cpb.RELATION_PARENT, verification=None),
            FAILED_PRECONDITION, "VERIFICATION_REQUIRED")
    # A method without an attestation id is no verification either.
    blank = cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE, attestation_id="  ")
    refused(rdb, lambda: bind(stub, helper, member, cpb.RELATION_PARENT, verification=blank),
            FAILED_PRECONDITION, "VERIFICATION_REQUIRED")
    assert bind(stub, helper, member, cpb.RELATION_PARENT, verification=FACE).binding.active


def test_verification_not_required_under_16(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    child = enroll(stub, itype=RESIDENT, birth="20150101")
    assert bind(stub, helper, child, verification=None).binding.active


def test_verification_required_boundary_exactly_16(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    sixteen_today = enroll(stub, itype=RESIDENT, birth="20101122")  # 16th birthday is "today"
    sixteen_tomorrow = enroll(stub, itype=RESIDENT, birth="20101123")  # still 15
    refused(rdb, lambda: bind(stub, helper, sixteen_today, verification=None), FAILED_PRECONDITION,
            "VERIFICATION_REQUIRED")
    assert bind(stub, helper, sixteen_tomorrow, verification=None).binding.active


# --- SELF_BINDING / ALREADY_BOUND / idempotency --------------------------------------------


def test_self_binding(hebei, rdb):
    stub = hebei.stub
    me = enroll(stub)
    refused(rdb, lambda: bind(stub, me, me, cpb.RELATION_SPOUSE), INVALID_ARGUMENT, "SELF_BINDING")


def test_already_bound_with_a_different_request_id(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    bind(stub, helper, member)
    refused(rdb, lambda: bind(stub, helper, member), ALREADY_EXISTS, "ALREADY_BOUND")
    assert active_members(stub, helper) == [member]


def test_same_bind_replayed_with_same_request_id_is_not_an_error(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    req = pb.BindMutualAidRequest(request_id="bind-replay-1", helper_id_number=helper, member_id_number=member,
                                  relation=cpb.RELATION_CHILD, member_verification=FACE)
    first = stub.BindMutualAid(req)
    before = snapshot(rdb)
    hebei.clock.advance(60_000)  # a replay must return the first answer, not a fresh one
    second = stub.BindMutualAid(req)
    assert second == first
    assert second.binding.bound_at_unix_ms == first.binding.bound_at_unix_ms
    assert snapshot(rdb) == before
    assert active_members(stub, helper) == [member]


def test_idempotency_key_reused_for_a_different_member(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    m1 = enroll(stub, itype=RESIDENT, birth="20150101")
    m2 = enroll(stub, itype=RESIDENT, birth="20160101")
    req = pb.BindMutualAidRequest(request_id="bind-reuse-1", helper_id_number=helper, member_id_number=m1,
                                  relation=cpb.RELATION_CHILD, member_verification=FACE)
    stub.BindMutualAid(req)
    other = pb.BindMutualAidRequest()
    other.CopyFrom(req)
    other.member_id_number = m2
    refused(rdb, lambda: stub.BindMutualAid(other), ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert active_members(stub, helper) == [m1]


def test_refused_bind_can_be_resent_with_the_same_request_id_after_the_fix(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="19550101")
    req = pb.BindMutualAidRequest(request_id="bind-fix-1", helper_id_number=helper, member_id_number=member,
                                  relation=cpb.RELATION_PARENT, member_verification=FACE)
    set_status(stub, member, cpb.PERSON_STATUS_SUSPENDED)
    refused(rdb, lambda: stub.BindMutualAid(req), FAILED_PRECONDITION, "MEMBER_NOT_INSURED")
    set_status(stub, member, cpb.PERSON_STATUS_ACTIVE)
    assert stub.BindMutualAid(req).binding.active


# --- unbinding -----------------------------------------------------------------------------


def test_unbind_by_helper_ends_the_binding(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    bind(stub, helper, member)
    hebei.clock.advance(1_000)
    ended = unbind(stub, helper, member).binding
    assert ended.active is False
    assert ended.end_reason == "UNBOUND"
    assert ended.ended_at_unix_ms == hebei.clock.now_ms()
    assert list(bindings(stub, helper).as_helper) == []
    assert list(bindings(stub, member).as_member) == []
    with_ended = bindings(stub, helper, include_ended=True).as_helper
    assert [(b.member_id_number, b.active, b.end_reason) for b in with_ended] == [(member, False, "UNBOUND")]
    as_member = bindings(stub, member, include_ended=True).as_member
    assert [(b.helper_id_number, b.active) for b in as_member] == [(helper, False)]


def test_unbind_of_non_existent_binding_is_not_found(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    refused(rdb, lambda: unbind(stub, helper, member), NOT_FOUND, "BINDING_NOT_FOUND")


def test_unbind_is_by_the_helper_and_only_once(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, birth="19900101")
    bind(stub, helper, member)
    # Swapped sides name a binding that does not exist: the member cannot unbind.
    refused(rdb, lambda: unbind(stub, member, helper), NOT_FOUND, "BINDING_NOT_FOUND")
    assert active_members(stub, helper) == [member]
    unbind(stub, helper, member)
    refused(rdb, lambda: unbind(stub, helper, member), NOT_FOUND, "BINDING_NOT_FOUND")


# --- bindings end automatically ------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "moved_to", "end_reason"),
    [("helper", "", "HELPER_TERMINATED"), ("helper", "11", "HELPER_MOVED"),
     ("member", "", "MEMBER_TERMINATED"), ("member", "11", "MEMBER_MOVED")],
    ids=["helper_terminated", "helper_moved", "member_terminated", "member_moved"],
)
def test_binding_ends_when_a_side_terminates_or_moves(hebei, rdb, side, moved_to, end_reason):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    bystander = enroll(stub, itype=RESIDENT, birth="20160101")
    bind(stub, helper, member)
    other_helper = enroll(stub, birth="19820101")
    bind(stub, other_helper, bystander)
    hebei.clock.advance(5_000)
    target = helper if side == "helper" else member
    resp = set_status(stub, target, cpb.PERSON_STATUS_TERMINATED, moved_to=moved_to)
    assert resp.person.status == cpb.PERSON_STATUS_TERMINATED
    assert resp.person.moved_to_province == moved_to
    assert [(b.helper_id_number, b.member_id_number, b.active, b.end_reason) for b in resp.ended_bindings] == [
        (helper, member, False, end_reason)]
    assert resp.ended_bindings[0].ended_at_unix_ms == hebei.clock.now_ms()
    assert active_members(stub, helper) == []
    assert list(bindings(stub, member).as_member) == []
    ended = bindings(stub, helper, include_ended=True).as_helper
    assert [(b.member_id_number, b.end_reason) for b in ended] == [(member, end_reason)]
    # Unrelated bindings are untouched.
    assert active_members(stub, other_helper) == [bystander]


def test_terminated_helper_ends_every_binding_on_both_sides(hebei, rdb):
    stub = hebei.stub
    grandparent = enroll(stub, birth="19500101")
    helper = enroll(stub)
    kids = [enroll(stub, itype=RESIDENT, birth="20150101") for _ in range(2)]
    bind(stub, grandparent, helper, cpb.RELATION_CHILD)
    for k in kids:
        bind(stub, helper, k)
    resp = set_status(stub, helper, cpb.PERSON_STATUS_TERMINATED)
    got = sorted((b.helper_id_number, b.member_id_number, b.end_reason) for b in resp.ended_bindings)
    assert got == sorted([(helper, k, "HELPER_TERMINATED") for k in kids]
                         + [(grandparent, helper, "MEMBER_TERMINATED")])
    assert all(not b.active for b in resp.ended_bindings)
    assert active_members(stub, grandparent) == []


@pytest.mark.parametrize("side", ["helper", "member"])
def test_suspended_side_keeps_the_binding(hebei, rdb, side):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, birth="19900101")
    credit(stub, helper, 10_000)
    bind(stub, helper, member)
    target = helper if side == "helper" else member
    resp = set_status(stub, target, cpb.PERSON_STATUS_SUSPENDED)
    assert resp.person.status == cpb.PERSON_STATUS_SUSPENDED
    assert list(resp.ended_bindings) == []
    assert active_members(stub, helper) == [member]
    b = bindings(stub, member).as_member[0]
    assert b.active and b.end_reason == ""


def test_suspended_helper_cannot_pay_no_active_helper(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    credit(stub, helper, 10_000)
    bind(stub, helper, member)
    set_status(stub, helper, cpb.PERSON_STATUS_SUSPENDED)
    res = settle(stub, member, 1_000)
    assert (res.acct_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen) == (0, 0, 1_000)
    assert res.helper_reason == "NO_ACTIVE_HELPER"
    assert balance(stub, helper) == 10_000
    # Back to ACTIVE, the same binding pays again.
    set_status(stub, helper, cpb.PERSON_STATUS_ACTIVE)
    res = settle(stub, member, 1_000)
    assert (res.mulaid_pay_fen, res.helper_id_number) == (1_000, helper)
    assert balance(stub, helper) == 9_000


# --- 亲情账户 proxy bindings ----------------------------------------------------------------


def bind_proxy(stub: Any, holder: str, relative: str, relation: int = cpb.RELATION_PARENT) -> pb.BindProxyResponse:
    return stub.BindProxy(pb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=holder,
                                              relative_id_number=relative, relation=relation,
                                              relative_verification=FACE))


def test_proxy_binding_is_listed_and_is_not_a_mutual_aid_binding(hebei, rdb):
    stub = hebei.stub
    holder = enroll(stub)
    relative = enroll(stub, birth="19550101")
    credit(stub, holder, 10_000)
    p = bind_proxy(stub, holder, relative).proxy
    assert (p.holder_id_number, p.relative_id_number, p.relation) == (holder, relative, cpb.RELATION_PARENT)
    assert p.bound_at_unix_ms == hebei.clock.now_ms()
    as_holder = stub.ListProxyBindings(pb.ListProxyBindingsRequest(id_number=holder))
    assert [x.relative_id_number for x in as_holder.as_holder] == [relative]
    assert list(as_holder.as_relative) == []
    as_relative = stub.ListProxyBindings(pb.ListProxyBindingsRequest(id_number=relative))
    assert [x.holder_id_number for x in as_relative.as_relative] == [holder]
    for pid in (holder, relative):
        listed = bindings(stub, pid, include_ended=True)
        assert list(listed.as_helper) == [] and list(listed.as_member) == []


def test_proxy_binding_moves_no_money(hebei, rdb):
    stub = hebei.stub
    holder = enroll(stub)
    relative = enroll(stub, birth="19550101")
    credit(stub, holder, 10_000)
    credit(stub, relative, 2_000)
    bind_proxy(stub, holder, relative)
    res = settle(stub, relative, 3_000)
    # The relative's own account pays; the holder's account is never touched.
    assert (res.acct_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen) == (2_000, 0, 1_000)
    assert res.helper_id_number == ""
    assert res.helper_reason == "PROXY_ONLY"
    assert balance(stub, holder) == 10_000
    assert balance(stub, relative) == 0


# --- Diagnose ------------------------------------------------------------------------------


def test_diagnose_proxy_only(hebei, rdb):
    stub = hebei.stub
    holder = enroll(stub)
    relative = enroll(stub, itype=RESIDENT, birth="19550101")
    credit(stub, holder, 10_000)
    bind_proxy(stub, holder, relative)
    before = snapshot(rdb)
    d = diagnose(stub, relative, holder)
    assert snapshot(rdb) == before
    assert d.would_pay is False
    assert d.binding_kind == pb.BINDING_KIND_PROXY_ONLY
    assert codes(d) == ["PROXY_ONLY"]
    assert "亲情账户" in d.findings[0].message
    assert d.helper_balance_fen == 10_000


def test_diagnose_not_bound(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    credit(stub, helper, 10_000)
    d = diagnose(stub, member, helper)
    assert (d.would_pay, d.binding_kind, codes(d)) == (False, pb.BINDING_KIND_NONE, ["NOT_BOUND"])


def test_diagnose_helper_zero_balance(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    bind(stub, helper, member)
    d = diagnose(stub, member, helper)
    assert (d.would_pay, d.binding_kind, codes(d)) == (False, pb.BINDING_KIND_MUTUAL_AID, ["HELPER_ZERO_BALANCE"])
    assert d.helper_balance_fen == 0


def test_diagnose_helper_not_employee(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub, itype=RESIDENT)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    d = diagnose(stub, member, helper)
    assert d.would_pay is False
    assert codes(d) == ["HELPER_NOT_EMPLOYEE", "NOT_BOUND"]


def test_diagnose_helper_not_active(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    credit(stub, helper, 10_000)
    bind(stub, helper, member)
    set_status(stub, helper, cpb.PERSON_STATUS_SUSPENDED)
    d = diagnose(stub, member, helper)
    assert (d.would_pay, d.binding_kind, codes(d)) == (False, pb.BINDING_KIND_MUTUAL_AID, ["HELPER_NOT_ACTIVE"])


def test_diagnose_member_not_insured(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    credit(stub, helper, 10_000)
    bind(stub, helper, member)
    set_status(stub, member, cpb.PERSON_STATUS_SUSPENDED)
    d = diagnose(stub, member, helper)
    assert (d.would_pay, d.binding_kind, codes(d)) == (False, pb.BINDING_KIND_MUTUAL_AID, ["MEMBER_NOT_INSURED"])
    stranger = new_id(birth="20150101")
    d = diagnose(stub, stranger, helper)
    assert codes(d) == ["MEMBER_NOT_INSURED", "NOT_BOUND"]


def test_diagnose_cross_province(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="19550101")
    credit(stub, helper, 10_000)
    bind(stub, helper, member, cpb.RELATION_PARENT)
    d = diagnose(stub, member, helper, member_insured_admdvs="110000")
    assert (d.would_pay, codes(d)) == (False, ["CROSS_PROVINCE"])
    assert "医保钱包" in d.findings[0].message
    # A member who moved away: the binding ended, so NOT_BOUND joins CROSS_PROVINCE.
    set_status(stub, member, cpb.PERSON_STATUS_TERMINATED, moved_to="11")
    d = diagnose(stub, member, helper)
    assert (d.would_pay, d.binding_kind, codes(d)) == (False, pb.BINDING_KIND_NONE, ["CROSS_PROVINCE", "NOT_BOUND"])


def test_diagnose_category_not_payable(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    credit(stub, helper, 10_000)
    bind(stub, helper, member)
    for category in (cpb.CATEGORY_FITNESS, cpb.CATEGORY_CASH_WITHDRAWAL, cpb.CATEGORY_VACCINE):
        d = diagnose(stub, member, helper, category=category)
        assert (d.would_pay, codes(d)) == (False, ["CATEGORY_NOT_PAYABLE"]), cpb.Category.Name(category)
    # 河北 allows CHECKUP.
    assert diagnose(stub, member, helper, category=cpb.CATEGORY_CHECKUP).would_pay is True


def test_diagnose_good_pair_would_pay(hebei, rdb):
    stub = hebei.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    credit(stub, helper, 10_000)
    bind(stub, helper, member)
    before = snapshot(rdb)
    d = diagnose(stub, member, helper, category=cpb.CATEGORY_OUTPATIENT)
    assert snapshot(rdb) == before
    assert d.would_pay is True
    assert d.binding_kind == pb.BINDING_KIND_MUTUAL_AID
    assert list(d.findings) == []
    assert d.helper_balance_fen == 10_000


def test_diagnose_agrees_with_settle_on_a_helper_another_one_goes_before(start_registry, rdb):
    """SPEC §4: where one helper pays all or nothing (河北, largest balance first), a bound, ACTIVE helper
    with money is never charged while another helper goes before them; Diagnose says so, as Settle
    does by charging the other one. Where helpers pay in turn (北京, 备案 order), a later helper pays
    what an earlier one cannot, and Diagnose finds nothing."""
    stub = start_registry("13").stub
    big, small = enroll(stub), enroll(stub)
    child = enroll(stub, itype=RESIDENT, birth="20150101")
    credit(stub, big, 5_000)
    credit(stub, small, 1_000)
    bind(stub, small, child)
    bind(stub, big, child)
    before = snapshot(rdb)
    d = diagnose(stub, child, small)
    assert snapshot(rdb) == before
    assert (d.would_pay, d.binding_kind, codes(d)) == (False, pb.BINDING_KIND_MUTUAL_AID, ["OTHER_HELPER_FIRST"])
    assert d.helper_balance_fen == 1_000
    assert (diagnose(stub, child, big).would_pay, codes(diagnose(stub, child, big))) == (True, [])
    for amount in (800, 6_000):  # one the small helper could cover, one neither covers alone
        res = settle(stub, child, amount)
        assert small not in [c.helper_id_number for c in res.helper_charges]
    assert balance(stub, small) == 1_000
    # The big helper suspended: the small one is first now, and pays.
    set_status(stub, big, cpb.PERSON_STATUS_SUSPENDED)
    assert (diagnose(stub, child, small).would_pay, codes(diagnose(stub, child, small))) == (True, [])
    assert settle(stub, child, 300).helper_id_number == small

    bj = start_registry("11").stub
    first, second = (enroll(bj, region="110000", division="110101") for _ in range(2))
    kid = enroll(bj, itype=RESIDENT, birth="20150101", region="110000", division="110101")
    credit(bj, first, 1_000)
    credit(bj, second, 1_000)
    bind(bj, first, kid)
    bind(bj, second, kid)
    assert (diagnose(bj, kid, second).would_pay, codes(diagnose(bj, kid, second))) == (True, [])
    res = bj.Settle(pb.SettleRequest(request_id=rid("settle"), patient_id_number=kid, amount_fen=1_500,
                                     use_account=True, category=cpb.CATEGORY_OUTPATIENT,
                                     institution_code="H11010100001", institution_admdvs="110000")).result
    assert [(c.helper_id_number, c.amount_fen) for c in res.helper_charges] == [(first, 1_000), (second, 500)]


def test_diagnosis_messages_name_a_status_and_a_category_in_chinese(hebei, rdb):
    """A finding's message is what the front desk reads (the console shows it under 系统说明): a
    status or a category is named in Chinese there, never as the enum's English name."""
    stub = hebei.stub
    member = enroll(stub, itype=RESIDENT, birth="20150101")
    for status, words in ((cpb.PERSON_STATUS_SUSPENDED, "暂停参保"), (cpb.PERSON_STATUS_TERMINATED, "终止参保")):
        helper = enroll(stub)
        credit(stub, helper, 10_000)
        set_status(stub, helper, status)
        d = diagnose(stub, member, helper, category=cpb.CATEGORY_PUBLIC_HEALTH)
        messages = {f.code: f.message for f in d.findings}
        assert words in messages["HELPER_NOT_ACTIVE"], messages
        assert "公共卫生" in messages["CATEGORY_NOT_PAYABLE"], messages
        assert not [m for m in messages.values() if re.search(r"[A-Z]{2,}", m)], messages


def test_every_status_and_category_has_its_chinese_name():
    for enum, prefix, names in ((cpb.PersonStatus, "PERSON_STATUS_", STATUS_ZH),
                                (cpb.Category, "CATEGORY_", CATEGORY_ZH)):
        assert {n.removeprefix(prefix) for n in enum.keys()} - {"UNSPECIFIED"} == set(names), names


def test_a_cross_province_finding_names_the_province(start_registry, rdb):
    """原因四 names where the member is insured as the desk reads a province (北京 (11)), in the
    bind-and-deduct provinces' diagnosis and the pooled ones' alike, not by its code alone."""
    for province, region, division in (("13", "130100", "130102"), ("62", "620100", "620102")):
        stub = start_registry(province).stub
        helper = enroll(stub, region=region, division=division)
        member = enroll(stub, itype=RESIDENT, birth="19550101", region=region, division=division)
        d = diagnose(stub, member, helper, member_insured_admdvs="110000")
        (message,) = [f.message for f in d.findings if f.code == "CROSS_PROVINCE"]
        assert "北京 (11)" in message and "省份 11" not in message, (province, message)
