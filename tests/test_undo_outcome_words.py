"""What a cashier is told a 2601 冲正 did (gateway/reasons.py OUTCOME_ZH, `warn_msg` when nothing had to
move) holds in the cases the router really answers it, not only the plain one:

- REVERSED, where the 医保钱包's quota went home to the employee who sent it (the relationship ended
  since the 2207): not every fen went back to the account it came from;
- VOIDED, of a 2207 the registry did receive but a crash stopped before it wrote anything (the recovery
  loop dropped it): it did reach the platform; nothing moved;
- ALREADY_RESTORED, of a 2208 whose reversal an earlier 2601 undid, when a later 2208 has reversed the
  settlement again: the settlement does not stand.

Each text says what happened and a next step (SPEC §6; docs/reconciliation.md, 2601).
"""

from __future__ import annotations

import itertools

import grpc
import pytest
from conftest import National, RunningRouter
from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway.reasons import OUTCOME_ZH
from medaid.router.v1 import router_pb2 as pb
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import balance, credit, enroll, fund_wallet, rid
from test_wallet_edges import Stop

INST = pb.Institution(fixmedins_code="H13010100044", mdtrtarea_admvs="130100")
T = 10.0
_seq = itertools.count(1)


def msgid() -> str:
    return f"{INST.fixmedins_code}20261122120000{next(_seq) % 10_000:04d}"


def settle(router: RunningRouter, psn: str, amount: int, m: str | None = None) -> pb.SetlInfo:
    return router.stub.Settle(pb.SettleRequest(msgid=m or msgid(), institution=INST, input=pb.SettleInput(
        psn_no=psn, psn_part_amt_fen=amount, medfee_sumamt_fen=amount, acct_used_flag="1",
        category=cpb.CATEGORY_OUTPATIENT)), timeout=T).setlinfo


def undo(router: RunningRouter, psn: str, omsgid: str, oinfno: str) -> pb.UndoResponse:
    return router.stub.Undo(pb.UndoRequest(msgid=msgid(), institution=INST, psn_no=psn, omsgid=omsgid,
                                           oinfno=oinfno), timeout=T)


def wallet_holder(national: National) -> tuple[str, str]:
    """A 河北 mother (no personal account money) whose 医保钱包 holds ¥5 her 北京 son sent her; and him."""
    mother = enroll(national.reg("13"), birth="19550101")
    son = enroll(national.reg("11"), region="110000", division="110105", birth="19800101")
    credit(national.reg("11"), son, 100_000)
    fund_wallet(national.wallet.stub, son, mother, 500)
    return mother, son


def next_step(words: str) -> bool:
    return "请" in words


def test_reversed_where_the_wallet_quota_went_home_is_told_so(start_router, national: National):
    router = start_router(batch=False)
    bj, w = national.reg("11"), national.wallet.stub
    mother, son = wallet_holder(national)
    m = msgid()
    assert settle(router, mother, 500, m).wallet_pay_fen == 500
    w.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=son, holder_id_number=mother, requested_by_id_number=son))
    assert undo(router, mother, m, "2207").outcome == "REVERSED"
    assert balance(bj, son) == 100_000  # the quota went home to him, not back to her wallet
    words = OUTCOME_ZH["REVERSED"]
    assert "原路退回" not in words and "划转人" in words and next_step(words), words


def test_voided_of_a_2207_that_arrived_and_wrote_nothing_is_told_so(start_router, national: National,
                                                                       loop_thread):
    router = start_router(batch=False)
    p, _ = wallet_holder(national)  # a bill the 医保钱包 pays part of is staged (settle.after_claim)
    reg = national.registries["13"].registry
    m = msgid()
    reg.fault_hook = Stop("settle.after_claim")
    try:
        with pytest.raises(grpc.RpcError):
            settle(router, p, 1_000, m)
    finally:
        reg.fault_hook = None
    national.clock.advance(60_000)
    assert loop_thread.run(reg.recover()).dropped == 1
    assert undo(router, p, m, "2207").outcome == "VOIDED"
    assert national.wallet.stub.GetWallet(wpb.GetWalletRequest(owner_id_number=p)).wallet.balance_fen == 500
    words = OUTCOME_ZH["VOIDED"]
    assert "未到达医保平台" not in words and "没有资金变动" in words and next_step(words), words


def test_already_restored_after_a_new_reversal_does_not_say_the_settlement_stands(start_router,
                                                                                   national: National):
    router = start_router(batch=False)
    hb = national.reg("13")
    p = enroll(hb)
    credit(hb, p, 10_000)
    s = settle(router, p, 1_000)
    first = msgid()
    router.stub.ReverseSettlement(pb.ReverseSettlementRequest(msgid=first, institution=INST, setl_id=s.setl_id,
                                                              psn_no=p), timeout=T)
    assert undo(router, p, first, "2208").outcome == "RESTORED"
    router.stub.ReverseSettlement(pb.ReverseSettlementRequest(msgid=msgid(), institution=INST, setl_id=s.setl_id,
                                                              psn_no=p), timeout=T)
    assert undo(router, p, first, "2208").outcome == "ALREADY_RESTORED"
    q = router.stub.QuerySettlement(pb.QuerySettlementRequest(msgid=msgid(), institution=INST, psn_no=p,
                                                              setl_id=s.setl_id), timeout=T)
    assert q.settlement.state == "REVERSED"
    words = OUTCOME_ZH["ALREADY_RESTORED"]
    assert "维持有效" not in words and "5203" in words and next_step(words), words


def test_every_outcome_says_what_happened_and_a_next_step():
    for outcome, words in OUTCOME_ZH.items():
        assert next_step(words), (outcome, words)
