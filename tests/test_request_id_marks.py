"""Request ids that read like the marks and money refs the registry derives from other ids (SPEC §7:
every request id has exactly one effect). A personal account's `applied` hash holds, beside each
credit's request id and each settlement id that charged it as a helper, the marks of a helper's
refund, of a transfer's debit and return, of a lot return, and the money ref of an undone reversal:
a credit or a bill whose request id reads like one of them is a request of its own, and the step
the mark belongs to still moves its money, once. Real 河北 registry (and the national wallet)."""

from __future__ import annotations

import pytest
from medaid.bench import money as verdict
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import RESIDENT, balance, bind, credit, enroll, rid, settle_request, total_balances
from test_wallet import Env, family

OWN, HELPER = 1_000, 10_000


def _credit(stub, pid: str, amount: int, request_id: str) -> None:
    stub.CreditAccount(pb.CreditAccountRequest(request_id=request_id, id_number=pid, amount_fen=amount,
                                               kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"))


def _helped_bill(stub) -> tuple[str, str, str]:
    """A patient's bill of 4,000: 1,000 from their own account, 3,000 from a bound helper's."""
    patient, helper = enroll(stub, birth="19600101"), enroll(stub)
    credit(stub, patient, OWN)
    credit(stub, helper, HELPER)
    bind(stub, helper, patient, relation=cpb.RELATION_CHILD)
    req = settle_request(patient, 4_000)
    assert stub.Settle(req).result.mulaid_pay_fen == 3_000
    return patient, helper, req.request_id


def test_a_reversal_returns_the_helpers_share_to_an_account_credited_under_a_look_alike_id(hebei, rdb):
    """A helper's refund is marked once per settlement; a credit sent as 'rev:' + that settlement's
    id is a credit, and the reversal still gives the helper their 3,000 back."""
    stub = hebei.stub
    patient, helper, sid = _helped_bill(stub)
    _credit(stub, helper, 100, f"rev:{sid}")
    total = total_balances(rdb)
    rev = stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=sid))
    assert (rev.acct_refund_fen, rev.mulaid_refund_fen) == (OWN, 3_000)
    assert (balance(stub, patient), balance(stub, helper)) == (OWN, HELPER + 100)
    assert total_balances(rdb) == total + 4_000


def test_an_undone_reversal_charges_a_helper_credited_under_a_look_alike_money_ref(hebei, rdb):
    """Undoing a reversal charges the helper again under a money ref of its own: a credit sent as
    '<settlement id>:u1' is not that charge, and the helper pays the 3,000 again, once; the next
    reversal gives it back."""
    stub = hebei.stub
    patient, helper, sid = _helped_bill(stub)
    rev = stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=sid))
    _credit(stub, helper, 100, f"{sid}:u1")
    total = total_balances(rdb)
    undo = stub.UndoReversal(pb.UndoReversalRequest(request_id=rid("2601"), reversal_id=rev.reversal_id))
    assert (undo.outcome, undo.acct_pay_fen, undo.mulaid_pay_fen) == ("RESTORED", OWN, 3_000)
    assert (balance(stub, patient), balance(stub, helper)) == (0, HELPER + 100 - 3_000)
    assert total_balances(rdb) == total - 4_000
    again = stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=sid))
    assert (again.acct_refund_fen, again.mulaid_refund_fen) == (OWN, 3_000)
    assert total_balances(rdb) == total


@pytest.fixture
def env(national, rdb) -> Env:
    return Env(national, rdb)


def test_a_transfer_is_debited_once_beside_ids_that_read_like_its_marks(env):
    """A transfer's debit and its return are marked once per transfer id on the sender's account: a
    credit sent as 'xfer-back:' + the id does not cancel the transfer, and a bill sent as 'xfer:' +
    the id, charging the sender as a helper, does not pass for the transfer's debit."""
    son, mother = family(env)
    reg = env.reg("13")
    _credit(reg, son, 100, "xfer-back:T1")
    assert env.send(son, "13", mother, 10_000, request_id="T1").state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert env.bal("13", son) == 90_100
    env.accept("T1", mother)
    patient = enroll(reg, birth="19600101")
    bind(reg, son, patient, relation=cpb.RELATION_PARENT)
    assert reg.Settle(settle_request(patient, 100, request_id="xfer:T2")).result.mulaid_pay_fen == 100
    left = env.bal("13", son)
    assert env.send(son, "13", mother, left, request_id="T2").state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert env.bal("13", son) == 0
    env.accept("T2", mother)
    assert env.wbal(mother) == 10_000 + left == 100_000


def test_a_lot_return_credits_an_account_credited_under_a_look_alike_id(hebei, rdb):
    """A sender's lot return is credited once per return id under a mark of its own: a credit sent
    as 'lotret:' + that id is another credit."""
    stub = hebei.stub
    sender = enroll(stub)
    _credit(stub, sender, 100, "lotret:R1")
    back = stub.CreditLotReturn(pb.CreditLotReturnRequest(return_id="R1", sender_id_number=sender, amount_fen=300,
                                                          transfer_id="T1"))
    assert (back.balance_after_fen, back.replayed) == (400, False)
    assert balance(stub, sender) == 400 and total_balances(rdb) == 400


def test_a_transfer_and_a_lot_return_under_the_old_marks_are_still_once(hebei, rdb):
    """A transfer debited, or a lot returned, before their marks held '|' (their old marks are
    'xfer:<id>' holding the amount, 'lotret:<id>' holding 'amount|transfer'): the transfer's return
    gives the amount back once, the lot return's resend credits nothing."""
    stub, applied = hebei.stub, hebei.registry.k.applied
    sender = enroll(stub)
    credit(stub, sender, 1_000)  # what the account held once the 500 had gone
    rdb.hset(applied(sender), mapping={"xfer:T0": "500", "lotret:R0": "300|T0"})
    refund = pb.RefundTransferRequest(transfer_id="T0", sender_id_number=sender, amount_fen=500)
    assert stub.RefundTransfer(refund).refunded_fen == 500
    assert (stub.RefundTransfer(refund).refunded_fen, balance(stub, sender)) == (500, 1_500)
    again = stub.CreditLotReturn(pb.CreditLotReturnRequest(return_id="R0", sender_id_number=sender, amount_fen=300,
                                                           transfer_id="T0"))
    assert again.replayed and balance(stub, sender) == 1_500


def test_two_provinces_settlements_with_one_id_are_two_wallet_spends(env):
    """The wallet serves every province's registry, each with its own clients' request ids: a 北京 and
    a 甘肃 settlement sent with the same id each spend their own patient's wallet, and each is
    reversed, and its reversal undone, on its own."""
    son = env.person("13", bal=100_000)
    bj = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    gs = env.person("62", itype=RESIDENT, birth="19550101", wallet=True)
    for mother in (bj, gs):
        env.accept(env.send(son, "13", mother, 20_000).transfer_id, mother)
    for prov, mother, place in (("11", bj, "110000"), ("62", gs, "620100")):
        res = env.reg(prov).Settle(pb.SettleRequest(
            request_id="S-1", patient_id_number=mother, amount_fen=4_000, use_account=True,
            category=cpb.CATEGORY_OUTPATIENT, institution_code=f"H{place}00001", institution_admdvs=place)).result
        assert (res.wallet_pay_fen, res.cash_pay_fen) == (4_000, 0)
    assert env.wbal(bj) == env.wbal(gs) == 16_000
    for prov in ("11", "62"):
        rev = env.reg(prov).ReverseSettlement(pb.ReverseSettlementRequest(request_id="R-1", settlement_id="S-1"))
        assert rev.wallet_refund_fen == 4_000
    assert env.wbal(bj) == env.wbal(gs) == 20_000
    for prov in ("11", "62"):
        undo = env.reg(prov).UndoReversal(pb.UndoReversalRequest(request_id="U-1", reversal_id="R-1"))
        assert (undo.outcome, undo.wallet_pay_fen) == ("RESTORED", 4_000)
    assert env.wbal(bj) == env.wbal(gs) == 16_000
    assert env.bal("13", son) == 60_000


def test_two_provinces_premiums_with_one_id_are_two_wallet_payments(env, rdb):
    """A 代缴 from a wallet is spent under an id of its own, apart from another province's 代缴 sent
    with the same request id: each mother's wallet pays her child's premium, and each cancel gives
    it back."""
    grandma = env.person("13", bal=100_000)
    kids = {}
    for prov in ("11", "62"):
        mother = env.person(prov, itype=RESIDENT, birth="19850101", wallet=True)
        kids[prov] = (mother, env.person(prov, itype=RESIDENT, birth="20150101"))
        env.accept(env.send(grandma, "13", mother, 50_000).transfer_id, mother)
    for prov, (mother, child) in kids.items():
        paid = env.reg(prov).PayResidentPremium(ppb.PayResidentPremiumRequest(
            request_id="P-1", payer_id_number=mother, payee_id_number=child, relation=cpb.RELATION_CHILD,
            year="2027", source=ppb.PREMIUM_SOURCE_WALLET)).premium
        assert paid.state == "PAID"
    assert [env.wbal(mother) for mother, _ in kids.values()] == [10_000, 10_000]
    for prov, (_, child) in kids.items():
        env.reg(prov).CancelResidentPremium(ppb.CancelResidentPremiumRequest(request_id="C-1", payee_id_number=child,
                                                                             year="2027"))
    assert [env.wbal(mother) for mother, _ in kids.values()] == [50_000, 50_000]
    assert verdict.check(rdb).conserved


def test_two_provinces_status_changes_with_one_id_each_end_their_wallet_relationships(env):
    """A person's wallet relationships end with their insurance, at the wallet, once per status change:
    a 北京 and a 甘肃 termination sent with the same request id are two endings, and each sender's
    unspent quota comes home."""
    moms = {}
    for prov in ("11", "62"):
        son, mother = env.person(prov, bal=50_000), env.person(prov, itype=RESIDENT, birth="19550101", wallet=True)
        env.accept(env.send(son, prov, mother, 20_000).transfer_id, mother)
        moms[prov] = (son, mother)
    for prov, (son, _) in moms.items():
        env.reg(prov).UpdatePersonStatus(pb.UpdatePersonStatusRequest(
            request_id="ST-1", id_number=son, status=cpb.PERSON_STATUS_TERMINATED))
    assert [(env.bal(prov, son), env.wbal(mother)) for prov, (son, mother) in moms.items()] == [(50_000, 0)] * 2
