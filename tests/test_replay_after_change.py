"""A settlement's replay after something changed since it was done (SPEC §7: a replay returns the first
answer). The hospital lost the answer to a Settle and resends it, same request id and fields, after
the province changed its policy overnight (payable categories, helper knobs), after an upgrade that
refuses what the earlier release settled, after the patient was suspended or a helper unbound: the
money moved the first time, so the resend is answered as then, and writes nothing. A request that was
never done is judged by the rules as they stand now, and a refusal still writes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from conftest import LoopThread, National, RunningRegistry, policy_for
from medaid.common.server import start_server
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry import category_rules
from medaid.registry.policy import Policy
from medaid.registry.service import Registry
from medaid.registry.servicer import register
from medaid.registry.v1 import registry_pb2 as pb
from medaid.router.v1 import router_pb2 as rpb
from support import balance, bind, credit, enroll, reason, rid, settle_request, snapshot

WITH_VACCINE = dataclasses.replace(policy_for("13"), payable_categories=policy_for("13").payable_categories
                                   | {"VACCINE"})


def _start(start_registry: Callable[..., RunningRegistry], policy: Any, atomic: bool) -> RunningRegistry:
    rr = start_registry("13", policy=policy)
    rr.registry.atomic = atomic
    return rr


def _refused(call: Any, req: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        call(req)
    return exc.value.code(), reason(exc.value)


def _member_with_helper(stub: Any) -> tuple[str, str]:
    member = enroll(stub)
    credit(stub, member, 1_000)
    helper = enroll(stub)
    credit(stub, helper, 10_000)
    bind(stub, helper, member)
    return member, helper


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "staged"])
def test_a_settlement_replayed_after_its_category_left_the_policy_gets_its_first_answer(start_registry, rdb,
                                                                                       atomic):
    """A VACCINE bill settled yesterday under a policy that listed VACCINE is replayed today, after the
    province dropped it (the registry restarted with the new policy file): the first answer, Settle and
    SettleBatch alike, nothing written. A new VACCINE bill is refused, writing nothing; the id reused
    with other fields is refused as reused."""
    before_change = _start(start_registry, WITH_VACCINE, atomic).stub
    member, helper = _member_with_helper(before_change)
    req = settle_request(member, 3_000, category=cpb.CATEGORY_VACCINE)
    first = before_change.Settle(req)
    assert (first.result.acct_pay_fen, first.result.mulaid_pay_fen) == (1_000, 2_000)

    now = _start(start_registry, policy_for("13"), atomic).stub
    before = snapshot(rdb)
    assert now.Settle(req) == first
    [out] = now.SettleBatch(pb.SettleBatchRequest(requests=[req])).outcomes
    assert out.response == first
    assert snapshot(rdb) == before, "a replay wrote something"
    assert (balance(now, member), balance(now, helper)) == (0, 8_000)

    fresh = settle_request(member, 500, category=cpb.CATEGORY_VACCINE)
    assert _refused(now.Settle, fresh) == (grpc.StatusCode.FAILED_PRECONDITION, "CATEGORY_NOT_PAYABLE")
    changed = settle_request(member, 500, category=cpb.CATEGORY_VACCINE, request_id=req.request_id)
    assert _refused(now.Settle, changed) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert snapshot(rdb) == before, "a refusal wrote something"
    # Pre-settlement moves nothing: it is judged by the rules as they stand now.
    assert _refused(now.PreSettle, pb.PreSettleRequest(
        patient_id_number=member, amount_fen=500, use_account=True, category=cpb.CATEGORY_VACCINE,
        institution_code=req.institution_code, institution_admdvs=req.institution_admdvs)) == \
        (grpc.StatusCode.FAILED_PRECONDITION, "CATEGORY_NOT_PAYABLE")


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "staged"])
def test_a_settlement_whose_claim_is_gone_replays_from_its_record_after_the_policy_changed(start_registry, rdb,
                                                                                          atomic):
    """The record is the settlement (docs/settlement-engine.md): without its request id's claim, a
    replay after the category left the policy is answered from the record, as settled."""
    then = _start(start_registry, WITH_VACCINE, atomic)
    member, helper = _member_with_helper(then.stub)
    req = settle_request(member, 3_000, category=cpb.CATEGORY_VACCINE)
    first = then.stub.Settle(req)
    rdb.delete(then.registry.ctx.idem.key(req.request_id))
    now = _start(start_registry, policy_for("13"), atomic).stub
    assert now.Settle(req) == first
    assert (balance(now, member), balance(now, helper)) == (0, 8_000)


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "staged"])
def test_a_resident_premium_bill_settled_by_an_earlier_release_replays_after_the_upgrade(
        start_registry, rdb, monkeypatch, atomic):
    """An earlier release settled a RESIDENT_PREMIUM bill as any other; the upgraded one refuses such
    bills (代缴 only). The bill's replay after the upgrade is answered as it was settled."""
    monkeypatch.setattr(category_rules, "NOT_A_BILL", frozenset())  # the earlier release
    earlier = _start(start_registry, policy_for("13"), atomic).stub
    member = enroll(earlier)
    credit(earlier, member, 5_000)
    req = settle_request(member, 3_800, category=cpb.CATEGORY_RESIDENT_PREMIUM)
    first = earlier.Settle(req)
    assert first.result.acct_pay_fen == 3_800
    monkeypatch.undo()  # the upgrade

    upgraded = _start(start_registry, policy_for("13"), atomic).stub
    before = snapshot(rdb)
    assert upgraded.Settle(req) == first
    assert snapshot(rdb) == before
    fresh = settle_request(member, 100, category=cpb.CATEGORY_RESIDENT_PREMIUM)
    assert _refused(upgraded.Settle, fresh) == (grpc.StatusCode.FAILED_PRECONDITION, "CATEGORY_NOT_PAYABLE")
    assert snapshot(rdb) == before
    assert balance(upgraded, member) == 1_200


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "staged"])
def test_a_settlement_replayed_after_the_helper_knobs_changed_gets_its_first_answer(start_registry, rdb, atomic):
    """Helpers chosen by largest balance, one paying in full, when the bill was settled; the province then
    moved to 备案 order, several helpers in turn, paying part: the replay is answered as settled."""
    then = _start(start_registry, policy_for("13"), atomic).stub
    member = enroll(then)
    small, large = enroll(then), enroll(then)
    credit(then, small, 1_000)
    credit(then, large, 50_000)
    bind(then, small, member)
    bind(then, large, member)
    req = settle_request(member, 5_000)
    first = then.Settle(req)
    assert (first.result.mulaid_pay_fen, first.result.helper_id_number) == (5_000, large)

    changed = dataclasses.replace(policy_for("13"), helper_selection="FILING_ORDER", helpers_in_turn=True,
                                  helper_partial=True)
    now = _start(start_registry, changed, atomic).stub
    before = snapshot(rdb)
    assert now.Settle(req) == first
    assert snapshot(rdb) == before


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "staged"])
def test_a_settlement_replayed_after_the_patient_was_suspended_or_the_helper_unbound(start_registry, rdb, atomic):
    """Suspended since, and the helper who paid unbound since: the resend still gets the settled answer;
    a new bill is refused (MEMBER_NOT_INSURED), writing nothing."""
    stub = _start(start_registry, policy_for("13"), atomic).stub
    member, helper = _member_with_helper(stub)
    req = settle_request(member, 3_000)
    first = stub.Settle(req)
    assert first.result.helper_id_number == helper
    stub.UnbindMutualAid(pb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=helper,
                                                   member_id_number=member))
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=member,
                                                         status=cpb.PERSON_STATUS_SUSPENDED))
    before = snapshot(rdb)
    assert stub.Settle(req) == first
    assert snapshot(rdb) == before
    assert _refused(stub.Settle, settle_request(member, 100)) == \
        (grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_NOT_INSURED")
    # The staged path too judges a new bill's patient before their lock: not even its fence counter moves.
    assert snapshot(rdb) == before


# --- through the router: 2207 and 2208 resent after the province's registry restarted -------------------

INST = rpb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
T = 10.0


def _but_attempts(snap: dict[bytes, Any]) -> dict[bytes, Any]:
    """A snapshot less the attempt counts and times of the router's msgid claims (a resend joins its
    msgid's claim as an attempt: msgid_claim.lua), which stay bound (`fp`) and done as they were."""
    return {k: (kind, tuple((f, v) for f, v in value if f not in (b"open", b"at")))
            if k.startswith(b"rtr:{mid:") else (kind, value) for k, (kind, value) in snap.items()}


def _restart(national: National, loop_thread: LoopThread, policy: Policy, stop: list[Any]) -> None:
    """河北's registry restarted on its own port with `policy` (its wallet and Redis as they were)."""
    old = national.registries["13"]

    async def swap() -> Any:
        for server in stop:
            await server.stop(0)
        if not stop:
            await old.server.stop(0)
        reg = Registry(old.client, policy, clock=national.clock)
        reg.wallet = old.registry.wallet
        return (await start_server(lambda s: register(s, reg), port=old.port)).server

    stop[:] = [loop_thread.run(swap())]


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one-by-one"])
def test_a_2207_resent_after_its_category_left_the_policy_gets_its_first_answer(start_router, national,
                                                                               loop_thread, rdb, batch):
    """A VACCINE 2207 settled while 河北 listed VACCINE; the answer lost, the province drops VACCINE and
    its registry restarts; the hospital resends the 2207 (same msgid, same message): the setlinfo as the
    first time, nothing written. Its 2208 then reverses it, and a resent 2208 is answered as it was."""
    router = start_router(batch=batch).stub
    stop: list[Any] = []
    try:
        _restart(national, loop_thread, WITH_VACCINE, stop)
        hb = national.reg("13")
        member, _ = _member_with_helper(hb)
        req = rpb.SettleRequest(msgid=f"{INST.fixmedins_code}202611221200{'01' if batch else '02'}0000",
                                institution=INST, input=rpb.SettleInput(
                                    psn_no=member, psn_part_amt_fen=3_000, medfee_sumamt_fen=3_000,
                                    acct_used_flag="1", category=cpb.CATEGORY_VACCINE))
        first = router.Settle(req, timeout=T)
        assert (first.setlinfo.acct_pay_fen, first.setlinfo.acct_mulaid_pay_fen) == (1_000, 2_000)

        _restart(national, loop_thread, policy_for("13"), stop)
        before = _but_attempts(snapshot(rdb))
        assert router.Settle(req, timeout=T) == first
        assert _but_attempts(snapshot(rdb)) == before, "a resent 2207 wrote something"

        undo = rpb.ReverseSettlementRequest(msgid=req.msgid[:-4] + "0001", institution=INST, psn_no=member,
                                            setl_id=first.setlinfo.setl_id)
        reversed_ = router.ReverseSettlement(undo, timeout=T)
        assert (reversed_.acct_refund_fen, reversed_.mulaid_refund_fen) == (1_000, 2_000)
        before = _but_attempts(snapshot(rdb))
        assert router.ReverseSettlement(undo, timeout=T) == reversed_
        assert _but_attempts(snapshot(rdb)) == before, "a resent 2208 wrote something"
    finally:
        async def stopped() -> None:
            for server in stop:
                await server.stop(0)

        loop_thread.run(stopped())
