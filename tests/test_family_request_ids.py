"""Request ids on the family-account RPCs (SPEC §7: every request id has exactly one effect): an id
names one request of one RPC, so one sent to another RPC is IDEMPOTENCY_KEY_REUSED even where the
two requests carry the same fields; the ids the registry derives for its own steps (a creation's
initial 划拨, the memberships a status change ends, the marks beside the settlement ids in a family
account) are apart from every client's id and from each other. Real 福建 and 甘肃 registries."""

from __future__ import annotations

from typing import Any

import grpc
from medaid.bench import money as verdict
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as pb
from support import FACE, RESIDENT, balance, credit, enroll, rid, settle
from test_family import (
    FJ,
    _reversed_family_bill,
    accept,
    account,
    create,
    family_sum_matches,
    huabo,
    invite,
    money,
    refused,
    shares,
    state_of,
)

EXISTS = grpc.StatusCode.ALREADY_EXISTS


def creator_and_invited_son(stub: Any) -> tuple[str, str, str]:
    """福建: a creator and her son, ¥3,000 each, the son invited to her new family account."""
    creator, son = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ)
    credit(stub, creator, 300_000)
    credit(stub, son, 300_000)
    fid = create(stub, creator).family_id
    invite(stub, fid, creator, son)
    return creator, son, fid


def test_a_request_id_sent_to_another_family_rpc_with_the_same_fields_is_refused(start_registry, rdb):
    stub = start_registry("35").stub
    creator, son, fid = creator_and_invited_son(stub)
    decline = fpb.RespondToInvitationRequest(request_id="same-1", family_id=fid, member_id_number=son)
    declined = stub.RespondToInvitation(decline)
    invite(stub, fid, creator, son)
    accept(stub, fid, son)
    huabo(stub, fid, son, 50_000)
    leave = fpb.LeaveFamilyAccountRequest(request_id="same-1", family_id=fid, member_id_number=son)
    refused(rdb, lambda: stub.LeaveFamilyAccount(leave), EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert stub.RespondToInvitation(decline) == declined  # its own RPC still answers the first answer
    assert state_of(account(stub, fid), son) == fpb.MEMBERSHIP_STATE_MEMBER and balance(stub, son) == 250_000

    huabo(stub, fid, creator, 50_000)
    withdraw = fpb.WithdrawContributionRequest(request_id="same-2", family_id=fid, contributor_id_number=creator)
    assert stub.WithdrawContribution(withdraw).returned_fen == 50_000
    dissolve = fpb.DissolveFamilyAccountRequest(request_id="same-2", family_id=fid, creator_id_number=creator)
    refused(rdb, lambda: stub.DissolveFamilyAccount(dissolve), EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert account(stub, fid).state == "ACTIVE"
    dissolve.request_id = "same-3"
    assert [(s.id_number, s.share_fen) for s in stub.DissolveFamilyAccount(dissolve).returned] == [(son, 50_000)]
    assert balance(stub, son) == 300_000 and balance(stub, creator) == 300_000


def test_a_transfer_whose_request_id_names_a_creation_moves_its_own_money(start_registry, rdb):
    """The initial 划拨 of a creation is a transfer of its own: a later 划拨 whose request id looks like
    it (the creation's id and ':init') is another request and moves its own money."""
    stub = start_registry("62").stub
    creator = enroll(stub, region="620100", division="620102")
    credit(stub, creator, 10_000)
    fid = create(stub, creator, initial_transfer_fen=1_000, request_id="fam-7").family_id
    assert huabo(stub, fid, creator, 2_000, request_id="fam-7:init").balance_after_fen == 7_000
    assert balance(stub, creator) == 7_000 and account(stub, fid).balance_fen == 3_000


def test_members_terminated_by_long_request_ids_with_one_ending_both_leave(start_registry, rdb):
    """Each status change ends the person's memberships under an id derived from its own request id
    (SPEC §5b): two long request ids that end alike are two requests, and both members leave with
    their shares."""
    stub = start_registry("35").stub
    creator, a, b = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ), enroll(stub, birth="19920101", **FJ)
    for p in (creator, a, b):
        credit(stub, p, 300_000)
    fid = create(stub, creator).family_id
    for p in (a, b):
        invite(stub, fid, creator, p)
        accept(stub, fid, p)
        huabo(stub, fid, p, 10_000)
    ending = "-status-change-from-the-province-hr-system-batch-2026"
    for i, p in enumerate((a, b)):
        stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(
            request_id=f"{i:011d}{ending}", id_number=p, status=cpb.PERSON_STATUS_TERMINATED))
    acct = account(stub, fid)
    assert [state_of(acct, p) for p in (a, b)] == [fpb.MEMBERSHIP_STATE_ENDED] * 2
    assert shares(acct) == {} and balance(stub, a) == balance(stub, b) == 300_000


def test_bills_whose_ids_look_like_the_family_accounts_marks_are_bills_of_their_own(start_registry, rdb):
    """A family account marks a reversal and a credited 划拨 beside the settlement ids; a bill whose
    request id reads like such a mark ('rev:' + a settlement id, 'x:' + a 划拨's id) is a bill of its
    own: the family account pays for it, and the settlement it names is reversed into the account."""
    stub = start_registry("62").stub
    creator = enroll(stub, region="620100", division="620102")
    kid = enroll(stub, itype=RESIDENT, birth="20150101", region="620100", division="620102")
    credit(stub, creator, 300_000)
    fid = create(stub, creator, initial_transfer_fen=100_000).family_id
    invite(stub, fid, creator, kid)
    assert settle(stub, kid, 10_000, request_id="S1").mulaid_pay_fen == 10_000
    assert settle(stub, kid, 20_000, request_id="rev:S1").mulaid_pay_fen == 20_000
    stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id="rv-1", settlement_id="S1"))
    assert account(stub, fid).balance_fen == 80_000
    huabo(stub, fid, creator, 1_000, request_id="T9")
    assert settle(stub, kid, 5_000, request_id="x:T9").mulaid_pay_fen == 5_000
    assert account(stub, fid).balance_fen == 76_000 and balance(stub, creator) == 199_000


def test_a_leave_returns_the_share_to_an_account_credited_under_a_look_alike_id(start_registry, rdb):
    """The share a member takes out of the family account is credited to their personal account once,
    under a mark of its own: a credit whose request id reads like that mark is another credit."""
    stub = start_registry("35").stub
    creator, son, fid = creator_and_invited_son(stub)
    accept(stub, fid, son)
    huabo(stub, fid, son, 50_000)
    stub.CreditAccount(pb.CreditAccountRequest(request_id=f"famret:{fid}:L1", id_number=son, amount_fen=100,
                                               kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"))
    left = stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(request_id="L1", family_id=fid, member_id_number=son))
    assert left.returned_fen == 50_000 and balance(stub, son) == 300_100


def test_a_bill_whose_id_reads_like_an_undos_money_ref_leaves_the_undo_whole(start_registry, rdb):
    """Undoing a reversal charges the family account again under a money ref of its own: a bill sent
    earlier as '<settlement id>:u1' is a bill of its own, the undo takes the share again, and the
    bill keeps what it paid."""
    _, stub, creator, child, fid, sid, rev = _reversed_family_bill(start_registry)
    other = settle(stub, child, 10_000, request_id=f"{sid}:u1")
    assert other.mulaid_pay_fen == 10_000 and account(stub, fid).balance_fen == 35_000
    start, personal = money(rdb, "62"), balance(stub, creator)
    undo = stub.UndoReversal(pb.UndoReversalRequest(request_id="u-2601", reversal_id=rev))
    assert (undo.outcome, undo.mulaid_pay_fen) == ("RESTORED", 12_000)
    assert (balance(stub, creator), account(stub, fid).balance_fen) == (personal, 23_000)
    assert money(rdb, "62") == start - 12_000
    assert stub.GetSettlement(pb.GetSettlementRequest(settlement_id=other.settlement_id)).result.state == "SETTLED"
    family_sum_matches(rdb, "62", fid)
    again = stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id="u-2208", settlement_id=sid))
    assert again.mulaid_refund_fen == 12_000 and account(stub, fid).balance_fen == 35_000
    assert money(rdb, "62") == start
    family_sum_matches(rdb, "62", fid)
    assert verdict.check(rdb).conserved


def answers_to_duplicates(call: Any, request: Any, copies: int = 8) -> list[str]:
    """The answers to `copies` identical requests sent at once (a double click, a client's resend)."""
    futures = [call.future(request) for _ in range(copies)]
    out = []
    for future in futures:
        try:
            out.append(future.result().SerializeToString(deterministic=True).hex())
        except grpc.RpcError as exc:
            out.append(f"{exc.code().name}: {exc.details()}")
    return out


def test_duplicates_of_a_leaving_sent_at_once_all_get_its_one_answer(start_registry, rdb):
    """A 回拨, a leave and a dissolution sent several times at once act once, and every copy gets
    the first's answer, not a refusal (NOT_A_MEMBER, NO_UNSPENT_SHARE, FAMILY_NOT_ACTIVE) of the
    state the first copy left."""
    stub = start_registry("35").stub
    for _ in range(3):  # the copies race: a few rounds make a lost race likely
        creator, son, fid = creator_and_invited_son(stub)
        accept(stub, fid, son)
        huabo(stub, fid, son, 10_000)
        huabo(stub, fid, creator, 20_000)
        for call, request in (
                (stub.WithdrawContribution, fpb.WithdrawContributionRequest(
                    request_id=rid("w"), family_id=fid, contributor_id_number=son)),
                (stub.LeaveFamilyAccount, fpb.LeaveFamilyAccountRequest(
                    request_id=rid("l"), family_id=fid, member_id_number=son)),
                (stub.DissolveFamilyAccount, fpb.DissolveFamilyAccountRequest(
                    request_id=rid("d"), family_id=fid, creator_id_number=creator))):
            got = answers_to_duplicates(call, request)
            assert len(set(got)) == 1 and ":" not in got[0], got
        assert balance(stub, son) == 300_000 and balance(stub, creator) == 300_000
        family_sum_matches(rdb, "35", fid)


def test_duplicates_of_a_transfer_sent_at_once_all_get_its_one_answer(start_registry, rdb):
    """A 划拨 (and a creation with its initial 划拨) sent several times at once with one request id
    moves the money once, and every copy gets that 划拨's answer: not MONTHLY_LIMIT_REACHED (福建, one
    划拨 a month) nor INSUFFICIENT_BALANCE (甘肃, the whole balance moved) judged on the state the
    first copy's debit left (SPEC §7: a replay returns the first answer)."""
    fujian, gansu = start_registry("35").stub, start_registry("62").stub
    for i in range(4):  # the copies race: a few rounds make a lost race likely
        for stub, where, amount in ((fujian, FJ, 100_000), (gansu, {"region": "620100", "division": "620102"},
                                                            300_000)):
            creator = enroll(stub, **where)
            credit(stub, creator, 300_000)
            fid = create(stub, creator).family_id
            transfer = fpb.TransferIntoFamilyAccountRequest(request_id=rid("hb"), family_id=fid,
                                                            contributor_id_number=creator, amount_fen=amount)
            got = answers_to_duplicates(stub.TransferIntoFamilyAccount, transfer)
            assert len(set(got)) == 1 and ":" not in got[0], (i, got)
            assert account(stub, fid).balance_fen == amount and balance(stub, creator) == 300_000 - amount
            family_sum_matches(rdb, "35" if stub is fujian else "62", fid)
        founder = enroll(fujian, **FJ)
        credit(fujian, founder, 300_000)
        creation = fpb.CreateFamilyAccountRequest(request_id=rid("fam"), creator_id_number=founder,
                                                  commitment=FACE, initial_transfer_fen=100_000)
        got = answers_to_duplicates(fujian.CreateFamilyAccount, creation)
        assert len(set(got)) == 1 and ":" not in got[0], (i, got)
        assert balance(fujian, founder) == 200_000
    assert not rdb.zcard("reg:35:{open}:setl") and not rdb.zcard("reg:62:{open}:setl")
    assert verdict.check(rdb).conserved
