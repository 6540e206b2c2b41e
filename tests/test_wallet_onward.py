"""The 医保钱包 as it runs today (SPEC §5): onward transfers wallet → near-kin's wallet,
in-province transfers, the sender's own wallet, rollout per 统筹区, 使用地变更, and wallet
relationships that end from either side. Same fixtures and people as tests/test_wallet.py ("today"
is 2026-11-22 10:00 Asia/Shanghai); every refusal is checked to write nothing, and money is
conserved across registries and wallet (medaid.bench.money) at the end of each story.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from medaid import cli
from medaid.bench import money
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from support import FACE, RESIDENT, new_id, reason, rid
from test_wallet import FP, INVALID, NOT_FOUND, Env, at, lines_of, lots_of, parts_of, refused
from test_wallet_edges import life_event

WALLET = wpb.TRANSFER_SOURCE_WALLET


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


def conserved(env: Env) -> money.MoneyReport:
    report = money.check(env.rdb)
    assert report.conserved, report.as_dict()
    return report


def three_generations(env: Env) -> tuple[str, str, str]:
    """A 河北 employee son funds his 北京 resident mother's wallet (30,000); her 甘肃 resident
    sister (his aunt) holds a wallet too (use-place 620100)."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    aunt = env.person("62", itype=RESIDENT, birth="19580101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    return son, mother, aunt


def onward(env: Env, sender: str, sprov: str, recipient: str, amount: int, **kw: Any) -> wpb.CreateTransferRequest:
    req = env.xfer_req(sender, sprov, recipient, amount, relation=cpb.RELATION_SIBLING, **kw)
    req.source = WALLET
    return req


# ================================================================================================
# Onward transfer
# ================================================================================================


def test_onward_transfer_keeps_the_origin_of_the_quota(env):
    son, mother, aunt = three_generations(env)
    t = env.w.CreateTransfer(onward(env, mother, "11", aunt, 12_000)).transfer
    assert (t.state, t.source, t.sender_province, t.recipient_province) == (
        wpb.TRANSFER_STATE_PENDING_ACCEPT, WALLET, "11", "62")
    assert [(p.origin_id_number, p.origin_province, p.amount_fen) for p in t.parts] == [(son, "13", 12_000)]
    # The quota left the sending wallet (not her registry account: a resident has none).
    assert env.wbal(mother) == 18_000 and env.wbal(aunt) == 0
    # The holder passing quota on is its sender: listed among hers, not among the son's.
    assert [x.transfer_id for x in env.w.ListOutgoingTransfers(
        wpb.ListOutgoingTransfersRequest(sender_id_number=mother)).transfers] == [t.transfer_id]
    assert t.transfer_id not in [x.transfer_id for x in env.w.ListOutgoingTransfers(
        wpb.ListOutgoingTransfersRequest(sender_id_number=son)).transfers]
    acc = env.accept(t.transfer_id, aunt)
    assert acc.transfer.state == wpb.TRANSFER_STATE_COMPLETED and acc.wallet.balance_fen == 12_000
    got = env.wallet(aunt)
    assert lots_of(got) == [(t.transfer_id, son, "13", 12_000, 12_000)]
    assert got.lots[0].via_id_number == mother
    assert dict(got.remaining_by_sender_fen) == {son: 12_000}
    # Spent in 甘肃, the quota clears to its origin province 河北, not to 北京 that passed it on.
    spent = env.spend(aunt, 5_000, place="620100")
    assert [(p.sender_province, p.amount_fen) for p in spent.parts] == [("13", 5_000)]
    assert lines_of(env.clearing("202611")) == [("13", "62", 5_000, 1)]
    assert env.bal("13", son) == 70_000
    conserved(env)


def test_onward_transfer_of_several_origins_makes_a_lot_per_origin(env):
    son, mother, aunt = three_generations(env)
    daughter = env.person("62", bal=50_000)
    env.fund(daughter, "62", mother, 20_000)
    t = env.w.CreateTransfer(onward(env, mother, "11", aunt, 40_000)).transfer  # 30,000 son + 10,000 daughter
    assert [(p.origin_id_number, p.origin_province, p.amount_fen) for p in t.parts] == [
        (son, "13", 30_000), (daughter, "62", 10_000)]
    env.accept(t.transfer_id, aunt)
    got = env.wallet(aunt)
    assert [(x.sender_id_number, x.sender_province, x.remaining_fen, x.via_id_number) for x in got.lots] == [
        (son, "13", 30_000, mother), (daughter, "62", 10_000, mother)]
    assert env.wbal(mother) == 10_000
    conserved(env)


def test_onward_transfer_limits_apply_to_the_sending_wallet(env):
    son, mother, aunt = three_generations(env)
    before = env.snap()
    refused(FP, "INSUFFICIENT_QUOTA", env.w.CreateTransfer, onward(env, mother, "11", aunt, 30_001))
    refused(FP, "AMOUNT_OVER_LIMIT", env.w.CreateTransfer, onward(env, mother, "11", aunt, 200_001))
    refused(FP, "VERIFICATION_REQUIRED", env.w.CreateTransfer, onward(env, mother, "11", aunt, 1_000,
                                                                     verification=None))
    refused(INVALID, "SENDER_PROVINCE_MISMATCH", env.w.CreateTransfer, onward(env, mother, "13", aunt, 1_000))
    assert env.snap() == before
    env.w.CreateTransfer(onward(env, mother, "11", aunt, 1_000))
    refused(FP, "PENDING_TRANSFER_EXISTS", env.w.CreateTransfer, onward(env, mother, "11", aunt, 1_000))
    env.clock.set(at(22, 22, 30))
    refused(FP, "OUTSIDE_TRANSFER_HOURS", env.w.CreateTransfer, onward(env, mother, "11", aunt, 1_000))


def test_onward_transfer_not_accepted_goes_back_to_its_lots_at_0600(env):
    son, mother, aunt = three_generations(env)
    t = env.w.CreateTransfer(onward(env, mother, "11", aunt, 12_000)).transfer
    env.clock.set(at(23, 6, 1))
    assert env.maintain().expired == 1
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    got = env.wallet(mother)
    assert got.wallet.balance_fen == 30_000 and [x.remaining_fen for x in got.lots] == [30_000]
    assert env.wbal(aunt) == 0 and env.bal("13", son) == 70_000
    refused(FP, "TRANSFER_EXPIRED", env.w.AcceptTransfer, wpb.AcceptTransferRequest(
        request_id=rid("acc"), transfer_id=t.transfer_id, recipient_id_number=aunt))
    conserved(env)


def test_onward_transfer_returned_after_its_lot_ended_goes_home(env):
    """The quota was passed on and not accepted; meanwhile the mother ended her relationship with the
    son (his lots in her wallet went home). At 06:00 the returned quota cannot go back into the ended
    lot: it goes to the son's personal account."""
    son, mother, aunt = three_generations(env)
    t = env.w.CreateTransfer(onward(env, mother, "11", aunt, 12_000)).transfer
    env.w.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=son, holder_id_number=mother, requested_by_id_number=mother))
    assert env.bal("13", son) == 70_000 + 18_000 and env.wbal(mother) == 0
    env.clock.set(at(23, 6, 1))
    env.maintain()
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 100_000
    assert env.wbal(mother) == 0 and env.wbal(aunt) == 0
    conserved(env)


def test_resident_wallet_holder_needs_source_wallet(env):
    """A resident has no personal account: sending from it is SENDER_NOT_EMPLOYEE, as before."""
    _, mother, aunt = three_generations(env)
    before = env.snap()
    refused(FP, "SENDER_NOT_EMPLOYEE", env.w.CreateTransfer,
            env.xfer_req(mother, "11", aunt, 1_000, relation=cpb.RELATION_SIBLING))
    assert env.snap() == before


# ================================================================================================
# Both sides hold a wallet; rollout per 统筹区
# ================================================================================================


def test_sender_must_hold_a_wallet(env):
    son = env.person("13", bal=100_000, wallet=False)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    before = env.snap()
    refused(FP, "SENDER_NO_WALLET", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 1_000))
    assert env.snap() == before
    env.open(son, "13")
    assert env.fund(son, "13", mother, 1_000).state == wpb.TRANSFER_STATE_COMPLETED


def test_wallet_not_live_in_either_sides_region(env):
    wallet = env.n.wallet.wallet
    son = env.person("13", bal=100_000)
    tangshan = env.person("13", bal=100_000, region="130200")
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    original = wallet.policy
    wallet.policy = dataclasses.replace(original, wallet_live_regions=("130100", "620100"))
    try:
        before = env.snap()
        refused(FP, "WALLET_NOT_LIVE", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 1_000))  # 北京 not live
        wallet.policy = dataclasses.replace(original, wallet_live_regions=("110000", "130100"))
        refused(FP, "WALLET_NOT_LIVE", env.w.CreateTransfer, env.xfer_req(tangshan, "13", mother, 1_000))
        assert env.snap() == before
        assert env.fund(son, "13", mother, 1_000).state == wpb.TRANSFER_STATE_COMPLETED
    finally:
        wallet.policy = original


# ================================================================================================
# 使用地变更
# ================================================================================================


def test_change_use_place_takes_effect_at_once(env):
    son = env.person("11", bal=100_000)
    mother = env.person("13", itype=RESIDENT, birth="19550101")
    env.open(mother, "13", "130200")
    env.fund(son, "11", mother, 20_000)
    refused(FP, "OUTSIDE_USE_PLACE", env.w.SpendWallet, env.spend_req(mother, 1_000, place="130100"))
    req = wpb.ChangeUsePlaceRequest(request_id=rid("place"), owner_id_number=mother, use_place_admdvs="130100")
    w = env.w.ChangeUsePlace(req).wallet
    assert (w.use_place_admdvs, w.balance_fen) == ("130100", 20_000)
    assert env.w.ChangeUsePlace(req).wallet == w  # a replay
    assert env.spend(mother, 1_000, place="130100").balance_after_fen == 19_000
    refused(FP, "OUTSIDE_USE_PLACE", env.w.SpendWallet, env.spend_req(mother, 1_000, place="130200"))
    # The insuring registry's waterfall follows the new place too (石家庄 institution).
    res = env.reg("13").Settle(rpb.SettleRequest(
        request_id=rid("2207"), patient_id_number=mother, amount_fen=2_000, use_account=True,
        category=cpb.CATEGORY_OUTPATIENT, institution_code="H13010100001", institution_admdvs="130100")).result
    assert res.wallet_pay_fen == 2_000
    stranger = env.person("13")
    before = env.snap()
    refused(INVALID, "USE_PLACE_OUTSIDE_PROVINCE", env.w.ChangeUsePlace, wpb.ChangeUsePlaceRequest(
        request_id=rid("place"), owner_id_number=mother, use_place_admdvs="110000"))
    refused(NOT_FOUND, "WALLET_NOT_FOUND", env.w.ChangeUsePlace, wpb.ChangeUsePlaceRequest(
        request_id=rid("place"), owner_id_number=stranger, use_place_admdvs="130100"))
    assert env.snap() == before


def test_change_use_place_to_a_code_that_is_no_pooling_region_refused(env):
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    aunt = env.person("62", itype=RESIDENT, birth="19580101", wallet=True)
    before = env.snap()
    for who, place in ((mother, "119999"), (mother, "110105"), (aunt, "629999"), (aunt, "620000")):
        refused(INVALID, "UNKNOWN_REGION", env.w.ChangeUsePlace, wpb.ChangeUsePlaceRequest(
            request_id=rid("place"), owner_id_number=who, use_place_admdvs=place))
    assert env.snap() == before
    assert env.wallet(mother).wallet.use_place_admdvs == "110000"
    w = env.w.ChangeUsePlace(wpb.ChangeUsePlaceRequest(request_id=rid("place"), owner_id_number=aunt,
                                                       use_place_admdvs="623000")).wallet
    assert w.use_place_admdvs == "623000"


# ================================================================================================
# A relationship ends from either side
# ================================================================================================


@pytest.mark.parametrize("side", ["sender", "holder"])
def test_either_side_ends_a_relationship(env, side):
    son, mother, aunt = three_generations(env)
    daughter = env.person("62", bal=50_000)
    env.fund(daughter, "62", mother, 5_000)
    env.spend(mother, 10_000)
    by = son if side == "sender" else mother
    req = wpb.EndWalletRelationshipRequest(request_id=rid("end"), sender_id_number=son, holder_id_number=mother,
                                           requested_by_id_number=by)
    resp = env.w.EndWalletRelationship(req)
    assert (resp.returned_fen, resp.transfers_returned) == (20_000, 0)
    assert env.bal("13", son) == 90_000
    got = env.wallet(mother)
    assert got.wallet.balance_fen == 5_000 and dict(got.remaining_by_sender_fen) == {daughter: 5_000}
    assert env.w.EndWalletRelationship(req) == resp  # a replay: nothing twice
    assert env.bal("13", son) == 90_000
    # Nothing left to end: refused, and the refusal writes nothing.
    before = env.snap()
    refused(NOT_FOUND, "RELATIONSHIP_NOT_FOUND", env.w.EndWalletRelationship, wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=son, holder_id_number=mother, requested_by_id_number=by))
    refused(INVALID, "NOT_A_SIDE", env.w.EndWalletRelationship, wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=daughter, holder_id_number=mother, requested_by_id_number=aunt))
    # One person as both sides is no relationship to end (not a transfer to oneself): its own reason.
    refused(INVALID, "SELF_RELATIONSHIP", env.w.EndWalletRelationship, wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=mother, holder_id_number=mother, requested_by_id_number=mother))
    assert env.snap() == before
    # A new transfer starts the relationship again.
    assert env.fund(son, "13", mother, 1_000).state == wpb.TRANSFER_STATE_COMPLETED
    conserved(env)


def test_an_ending_resent_while_its_first_attempt_runs_gets_the_same_answer(env, national, monkeypatch):
    """A client that times out resends EndWalletRelationship with the same request id while the
    first attempt is still ending the relationship. The resend finds no live relationship (the first
    took the lots out) and must still answer as the first does, not RELATIONSHIP_NOT_FOUND: one
    request, one answer. Each attempt's look at the relationship is held back (no Redis or gRPC
    mocked) so the two interleave the way a slow first attempt makes them."""
    son, mother, aunt = three_generations(env)
    req = wpb.EndWalletRelationshipRequest(request_id=rid("end"), sender_id_number=son, holder_id_number=mother,
                                           requested_by_id_number=son)
    wallet = national.wallet.wallet
    live = wallet._relationship_live
    looked: list[str] = []

    async def held_back(sender: str, holder: str) -> bool:
        looked.append(sender)
        if len(looked) == 1:  # the first attempt goes on once its resend is under way
            while len(looked) < 2:
                await asyncio.sleep(0.001)
        else:  # the resend looks once the first attempt has ended it all
            while await wallet.r.hget(f"wal:{{rid:{req.request_id}}}", "state") != b"DONE":
                await asyncio.sleep(0.001)
        return bool(await live(sender, holder))

    monkeypatch.setattr(wallet, "_relationship_live", held_back)
    first, resend = env.w.EndWalletRelationship.future(req), env.w.EndWalletRelationship.future(req)
    answers = []
    for call in (first, resend):
        try:
            answers.append(call.result(timeout=30))
        except grpc.RpcError as exc:
            answers.append((exc.code(), reason(exc)))
    assert answers[0] == answers[1], answers
    assert (answers[0].returned_fen, env.bal("13", son), env.wbal(mother)) == (30_000, 100_000, 0)
    assert env.w.EndWalletRelationship(req) == answers[0]  # and a later replay too
    conserved(env)


def test_ending_an_onward_relationship_sends_the_lots_to_the_funding_employee(env):
    son, mother, aunt = three_generations(env)
    t = env.w.CreateTransfer(onward(env, mother, "11", aunt, 12_000)).transfer
    env.accept(t.transfer_id, aunt)
    pending = env.w.CreateTransfer(onward(env, mother, "11", aunt, 3_000, request_id=rid("xfer"))).transfer
    resp = env.w.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=mother, holder_id_number=aunt, requested_by_id_number=aunt))
    # The aunt's lot passed on by the mother goes to the son, whose account funded it; the transfer still
    # waiting goes back to the mother's wallet.
    assert (resp.returned_fen, resp.transfers_returned) == (12_000, 1)
    assert env.transfer(pending.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 70_000 + 12_000
    assert env.wbal(aunt) == 0 and env.wbal(mother) == 18_000
    conserved(env)


@pytest.mark.parametrize(("status", "moved_to"), [("TERMINATED", ""), ("TERMINATED", "44")])
def test_recipient_terminated_or_moved_their_lots_return_to_the_senders(env, status, moved_to):
    son, mother, aunt = three_generations(env)
    daughter = env.person("62", bal=50_000)
    t = env.w.CreateTransfer(onward(env, mother, "11", aunt, 10_000)).transfer
    env.accept(t.transfer_id, aunt)
    waiting = env.send(daughter, "62", mother, 4_000)
    env.set_status("11", mother, cpb.PersonStatus.Value("PERSON_STATUS_" + status), moved_to=moved_to)
    # Her 20,000 left of the son's lot go home; the daughter's transfer waiting for her goes back. As a
    # sender (by onward transfer) her relationship with the aunt ends too: the aunt's 10,000 go to the
    # son, whose account funded them.
    assert env.wbal(mother) == 0 and env.wbal(aunt) == 0
    assert env.bal("13", son) == 70_000 + 20_000 + 10_000
    assert env.transfer(waiting.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("62", daughter) == 50_000
    conserved(env)


def test_sender_terminated_returns_lots_passed_on_by_others(env):
    son, mother, aunt = three_generations(env)
    t = env.w.CreateTransfer(onward(env, mother, "11", aunt, 10_000)).transfer
    env.accept(t.transfer_id, aunt)
    env.set_status("13", son, cpb.PERSON_STATUS_TERMINATED, moved_to="44")
    assert env.bal("13", son) == 100_000
    assert env.wbal(mother) == 0 and env.wbal(aunt) == 0
    assert lots_of(env.wallet(aunt)) == []
    conserved(env)


def test_spend_parts_of_a_passed_on_lot(env):
    son, mother, aunt = three_generations(env)
    t = env.w.CreateTransfer(onward(env, mother, "11", aunt, 10_000)).transfer
    env.accept(t.transfer_id, aunt)
    s = env.spend(aunt, 4_000, place="620100")
    assert parts_of(s) == [(t.transfer_id + "#1", "13", 4_000)]


def test_onward_transfer_waiting_when_its_funding_employee_leaves_goes_home(env):
    son, mother, aunt = three_generations(env)
    t = env.w.CreateTransfer(onward(env, mother, "11", aunt, 12_000)).transfer
    env.set_status("13", son, cpb.PERSON_STATUS_TERMINATED, moved_to="44")
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    refused(FP, "TRANSFER_EXPIRED", env.w.AcceptTransfer, wpb.AcceptTransferRequest(
        request_id=rid("acc"), transfer_id=t.transfer_id, recipient_id_number=aunt))
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0 and env.wbal(aunt) == 0
    conserved(env)


def test_cli_commands_for_issue_14(env, tmp_path, capsys):
    """The CLI reaches every new operation: an onward transfer, 使用地变更, a relationship end, a 统筹区 move,
    a proxy removal and a death."""
    son, mother, aunt = three_generations(env)
    n = env.n
    base = ["--topology", str(tmp_path / "none.json"), "--wallet", f"127.0.0.1:{n.wallet.port}", "--json",
            *[x for p, r in n.registries.items() for x in ("--registry", f"{p}=127.0.0.1:{r.port}")]]

    def run(*args: str) -> dict[str, Any]:
        assert cli.main([*base, *args]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    t = run("transfer", mother, aunt, "SIBLING", "50.00", "--from-wallet", "--province", "11",
            "--face", "FACE-CLI")["transfer"]
    assert (t["source"], t["amount_fen"]) == ("TRANSFER_SOURCE_WALLET", "5000")
    assert run("use-place", aunt, "620200")["wallet"]["use_place_admdvs"] == "620200"
    assert run("end-relationship", son, mother, "--by", son)["returned_fen"] == "25000"
    assert run("move-region", son, "130200")["person"]["pooling_region"] == "130200"
    env.reg("13").BindProxy(rpb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=son,
                                                 relative_id_number=mother, relation=cpb.RELATION_PARENT,
                                                 relative_verification=FACE))
    assert run("remove-proxy", son, mother, "--by", mother)["proxy"]["relative_id_number"] == mother
    heir = new_id("130102", "19850101")
    # The onward transfer still waiting carries the son's quota: it comes home too, then all is paid out.
    assert run("record-death", son, heir, "20261121")["paid_out_fen"] == "100000"
    conserved(env)


def test_reversal_after_the_relationship_ended_sends_the_refund_home(env):
    """A settlement paid from the wallet is reversed after the lot's relationship ended: the refunded
    fen go to the funding employee's account, not back into the ended lot."""
    son, mother, _ = three_generations(env)
    res = env.reg("11").Settle(rpb.SettleRequest(
        request_id=rid("2207"), patient_id_number=mother, amount_fen=10_000, use_account=True,
        category=cpb.CATEGORY_OUTPATIENT, institution_code="H11010500001", institution_admdvs="110000")).result
    assert res.wallet_pay_fen == 10_000
    env.w.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=son, holder_id_number=mother, requested_by_id_number=son))
    assert env.bal("13", son) == 90_000 and env.wbal(mother) == 0
    rev = env.reg("11").ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rid("2208"),
                                                                       settlement_id=res.settlement_id))
    assert rev.wallet_refund_fen == 10_000
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    assert env.clearing("202611").total_fen == 0
    conserved(env)


def test_concurrent_onward_transfers_pass_each_fen_of_quota_on_once(env, national):
    """Eight onward transfers of the same quota at once (the one-pending rule off, so each can be
    admitted), and each resent at once with the same id: the wallet's lots are taken once each, so at
    most what the wallet holds is passed on; the others fail (INSUFFICIENT_QUOTA) or are refused,
    giving their limits back; money is conserved."""
    son, mother, aunt = three_generations(env)  # mother holds 30,000 of the son's
    wallet = national.wallet.wallet
    policy = wallet.policy
    wallet.policy = dataclasses.replace(policy, one_pending_per_sender=False, daily_transfers=100)
    try:
        reqs = [onward(env, mother, "11", aunt, 10_000) for _ in range(8)]

        def send(req: wpb.CreateTransferRequest) -> str:
            try:
                return wpb.TransferState.Name(env.w.CreateTransfer(req).transfer.state)
            except grpc.RpcError as exc:
                return reason(exc)

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(send, [r for r in reqs for _ in range(2)]))
    finally:
        wallet.policy = policy
    per_id = [set(answers[2 * i:2 * i + 2]) for i in range(8)]
    pending = [r for r, a in zip(reqs, per_id, strict=True) if a == {"TRANSFER_STATE_PENDING_ACCEPT"}]
    assert len(pending) == 3, answers
    assert all(a <= {"TRANSFER_STATE_PENDING_ACCEPT"} or a <= {"INSUFFICIENT_QUOTA"} for a in per_id), answers
    assert env.wbal(mother) == 0
    for r in pending:
        env.accept(r.request_id, aunt)
    assert env.wbal(aunt) == 30_000
    assert sum(x.remaining_fen for x in env.wallet(aunt).lots) == 30_000
    conserved(env)


def test_an_ending_counts_passed_on_quota_it_sent_home_from_a_transfer_in_flight(env):
    """The mother passed 12,000 of the son's quota on to the aunt, not accepted yet, and ended her
    relationship with the son (his 18,000 left in her wallet went home). The aunt then ends her
    relationship with the mother: the waiting transfer goes back, and as its lot in the mother's
    wallet ended, its 12,000 go home to the son. The ending's answer counts them as sent home."""
    son, mother, aunt = three_generations(env)
    t = env.w.CreateTransfer(onward(env, mother, "11", aunt, 12_000)).transfer
    env.w.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=son, holder_id_number=mother, requested_by_id_number=mother))
    ended = env.w.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=mother, holder_id_number=aunt, requested_by_id_number=aunt))
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0 and env.wbal(aunt) == 0
    assert (ended.returned_fen, ended.transfers_returned) == (12_000, 1)
    conserved(env)


def test_a_holders_end_counts_passed_on_quota_in_flight_to_her_that_went_home(env):
    """As above, but the aunt's insurance ends: the quota in flight to her went home to the son, and
    her end's answer says so (returned as holder), as it does for a transfer from an account."""
    son, mother, aunt = three_generations(env)
    env.w.CreateTransfer(onward(env, mother, "11", aunt, 12_000))
    env.w.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=son, holder_id_number=mother, requested_by_id_number=son))
    ended = env.w.EndPersonWalletRelationships(wpb.EndPersonWalletRelationshipsRequest(
        request_id=rid("endp"), id_number=aunt, reason="TERMINATED", province="62"))
    assert (ended.returned_as_sender_fen, ended.returned_as_holder_fen) == (0, 12_000)
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0 and env.wbal(aunt) == 0
    conserved(env)


def _son_terminated_during_onward_debit(national: Any, monkeypatch: Any, son: str, where: str,
                                        fired: list[bool]) -> None:
    """The son's termination (the end of his wallet relationships), run once, where `where` says:
    just before the mother's onward debit script (`before_debit`), just after it (`after_debit`), or
    just before the parts it took are recorded on the transfer (`before_parts...`)."""
    wallet = national.wallet.wallet

    async def terminated() -> None:
        fired.append(True)
        await life_event(national.registries["13"].port, son, "TERMINATED")

    debit, cas = wallet.lua["wallet_xfer_out"], wallet.lua["xfer_cas"]

    async def during_debit(*args: Any, **kw: Any) -> Any:
        if where == "before_debit" and not fired:
            await terminated()
        taken = await debit(*args, **kw)
        if where == "after_debit" and not fired:
            await terminated()
        return taken

    async def before_parts(*args: Any, **kw: Any) -> Any:
        if where.startswith("before_parts") and not fired and list(kw["args"][:2]) == ["CREATED", "PENDING_ACCEPT"]:
            await terminated()
        return await cas(*args, **kw)

    monkeypatch.setitem(wallet.lua._scripts, "wallet_xfer_out", during_debit)
    monkeypatch.setitem(wallet.lua._scripts, "xfer_cas", before_parts)


@pytest.mark.parametrize("where", ["before_debit", "after_debit", "before_parts", "before_parts_then_stop"])
def test_onward_transfer_being_debited_as_its_funding_employee_leaves_goes_home(env, national, monkeypatch, where):
    """SPEC §5: when the son's insurance ends, his unspent quota goes home, passed on or not. The
    mother's onward transfer to the aunt, carrying 12,000 of his quota, is being debited at that very
    moment: the son's termination (and the end of his wallet relationships) runs just before the
    debit script (`before_debit`), just after it (`after_debit`), or just before the parts it took
    are recorded on the transfer (`before_parts`; `..._then_stop`: the create would stop right after
    recording them, before it looks again). The end, looking for transfers in flight, finds no parts
    recorded on the transfer, but the quota its debit took. Whatever the interleaving, the son's quota
    is not passed on: the transfer fails (INSUFFICIENT_QUOTA: the end took it first;
    RELATIONSHIP_ENDED: the end, or the transfer, failed it), and the 12,000 go home once."""
    son, mother, aunt = three_generations(env)
    wallet = national.wallet.wallet
    fired: list[bool] = []

    def stop(point: str) -> None:
        if where == "before_parts_then_stop" and point == "transfer.after_pending":
            raise RuntimeError("the create stops here")

    _son_terminated_during_onward_debit(national, monkeypatch, son, where, fired)
    monkeypatch.setattr(wallet, "fault_hook", stop)
    req = onward(env, mother, "11", aunt, 12_000)
    try:
        answer = env.w.CreateTransfer(req).transfer.state
    except grpc.RpcError as exc:
        answer = reason(exc)
    monkeypatch.undo()
    assert fired
    # Once debited, the end finds the quota the transfer carries (as the debit took it) and fails it
    # before it waits: the create never reaches the stop after recording its parts.
    expected = {"before_debit": "INSUFFICIENT_QUOTA", "after_debit": "RELATIONSHIP_ENDED",
                "before_parts": "RELATIONSHIP_ENDED", "before_parts_then_stop": "RELATIONSHIP_ENDED"}
    assert answer == expected[where]
    assert env.transfer(req.request_id).state in (wpb.TRANSFER_STATE_RETURNED, wpb.TRANSFER_STATE_FAILED)
    assert (env.bal("13", son), env.wbal(mother), env.wbal(aunt)) == (100_000, 0, 0)
    env.maintain()
    assert (env.bal("13", son), env.wbal(mother), env.wbal(aunt)) == (100_000, 0, 0)
    conserved(env)


@pytest.mark.parametrize("where", ["before_debit", "after_debit", "before_parts"])
def test_an_end_counts_passed_on_quota_it_sent_home_while_being_debited(env, national, monkeypatch, where):
    """SPEC §5b, decision 18: the son's termination ends his wallet relationships while the mother's
    onward transfer of 12,000 of his quota to the aunt is being debited (just before the debit
    script, just after it, or just before its parts are recorded). Whichever way it goes, all 30,000
    of his quota go home, and the end's answer — what his province books — says 30,000 returned as
    sender, once: a resend of the end answers the same."""
    son, mother, aunt = three_generations(env)
    wallet = national.wallet.wallet
    fired: list[bool] = []
    answers: list[Any] = []
    end = wallet.end_person_relationships

    async def recorded(req: Any, *args: Any, **kw: Any) -> Any:
        answer = await end(req, *args, **kw)
        answers.append((req, answer))
        return answer

    monkeypatch.setattr(wallet, "end_person_relationships", recorded)
    _son_terminated_during_onward_debit(national, monkeypatch, son, where, fired)
    req = onward(env, mother, "11", aunt, 12_000)
    try:
        env.w.CreateTransfer(req)
    except grpc.RpcError:
        pass
    monkeypatch.undo()
    assert fired and len(answers) == 1
    env.maintain()
    assert (env.bal("13", son), env.wbal(mother), env.wbal(aunt)) == (100_000, 0, 0)
    first, answer = answers[0]
    assert (answer.returned_as_sender_fen, answer.returned_as_holder_fen) == (30_000, 0)
    again = env.w.EndPersonWalletRelationships(first)
    assert (again.returned_as_sender_fen, again.returned_as_holder_fen) == (30_000, 0)
    conserved(env)


@pytest.mark.parametrize("how", ["terminated", "release"])
@pytest.mark.parametrize("passed", [12_000, 30_000])
def test_an_end_counts_quota_an_onward_debit_took_between_its_look_and_its_release(env, national, monkeypatch,
                                                                                   how, passed):
    """SPEC §5b: the son's relationships as a sender end (his termination, or his registry's
    ReleaseSenderLots) while the mother's onward transfer of his quota (part of it, or all of it) to
    the aunt is created. The end looks for transfers in flight before the debit (the transfer has
    taken nothing yet), the debit then takes the quota from his lot before the end releases the lots,
    and the transfer's refund (it carries quota of a relationship that ended) comes after the
    release. All 30,000 of his quota go home, and the end's answer says so, once, with the mother's
    wallet counted as touched: a resend of the end answers the same."""
    son, mother, aunt = three_generations(env)
    wallet = national.wallet.wallet
    steps: list[str] = []
    answers: list[Any] = []
    end = wallet.end_person_relationships if how == "terminated" else wallet.release_sender_lots
    debit, release, back = (wallet.lua[n] for n in ("wallet_xfer_out", "lots_release", "wallet_xfer_back"))

    async def after(step: str) -> None:
        for _ in range(500):
            if step in steps:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{step} never came: {steps}")

    async def recorded(req: Any, *args: Any, **kw: Any) -> Any:
        answer = await end(req, *args, **kw)
        answers.append((req, answer))
        return answer

    async def the_end() -> None:
        if how == "terminated":
            await life_event(national.registries["13"].port, son, "TERMINATED")
            return
        async with grpc.aio.insecure_channel(f"127.0.0.1:{national.wallet.port}") as channel:
            await wpb_grpc.WalletServiceStub(channel).ReleaseSenderLots(wpb.ReleaseSenderLotsRequest(
                request_id=rid("rel"), sender_id_number=son, reason="TERMINATED"))

    def hook(point: str) -> None:
        if point == "release.after_transfers":
            steps.append("looked")

    async def debit_after_the_look(*args: Any, **kw: Any) -> Any:
        if "debited" not in steps:
            asyncio.get_running_loop().create_task(the_end())
            await after("looked")
        taken = await debit(*args, **kw)
        steps.append("debited")
        return taken

    async def release_after_the_debit(*args: Any, **kw: Any) -> Any:
        await after("debited")
        done = await release(*args, **kw)
        steps.append("released")
        return done

    async def refund_after_the_release(*args: Any, **kw: Any) -> Any:
        await after("released")
        return await back(*args, **kw)

    monkeypatch.setattr(wallet, "end_person_relationships" if how == "terminated" else "release_sender_lots",
                        recorded)
    monkeypatch.setattr(wallet, "fault_hook", hook)
    monkeypatch.setitem(wallet.lua._scripts, "wallet_xfer_out", debit_after_the_look)
    monkeypatch.setitem(wallet.lua._scripts, "lots_release", release_after_the_debit)
    monkeypatch.setitem(wallet.lua._scripts, "wallet_xfer_back", refund_after_the_release)
    req = onward(env, mother, "11", aunt, passed)
    with pytest.raises(grpc.RpcError) as refusal:
        env.w.CreateTransfer(req)
    assert reason(refusal.value) == "RELATIONSHIP_ENDED"
    for _ in range(500):
        if answers:
            break
        time.sleep(0.01)
    monkeypatch.undo()
    assert steps[:3] == ["looked", "debited", "released"] and len(answers) == 1
    env.maintain()
    assert env.transfer(req.request_id).state == wpb.TRANSFER_STATE_FAILED
    assert (env.bal("13", son), env.wbal(mother), env.wbal(aunt)) == (100_000, 0, 0)
    first, answer = answers[0]
    if how == "terminated":
        assert (answer.returned_as_sender_fen, answer.returned_as_holder_fen) == (30_000, 0)
        again = env.w.EndPersonWalletRelationships(first)
        assert (again.returned_as_sender_fen, again.returned_as_holder_fen) == (30_000, 0)
    else:
        assert (answer.returned_fen, answer.wallets_touched) == (30_000, 1)
        again = env.w.ReleaseSenderLots(first)
        assert (again.returned_fen, again.wallets_touched) == (30_000, 1)
    conserved(env)
