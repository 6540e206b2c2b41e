"""2601 冲正 and the msgids of two institutions (SPEC §6: a msgid is the idempotency key per
institution). An institution whose msgids begin with another's code (a hospital group's HIS that
builds every campus's msgids with the group's code) undoes its own message even when the other
institution used the same msgid: the check that refuses another institution's message looks at that
one only when the sender has no message of its own by that msgid.
"""

from __future__ import annotations

import itertools

import grpc
import pytest
from conftest import National
from medaid.common.v1 import common_pb2 as cpb
from medaid.router.v1 import router_pb2 as pb
from support import balance, credit, enroll, reason

CAMPUS = pb.Institution(fixmedins_code="H13010100077", mdtrtarea_admvs="130100")
GROUP = pb.Institution(fixmedins_code="H13010100088", mdtrtarea_admvs="130100")
T = 10.0
_seq = itertools.count(1)


def msgid(inst: pb.Institution) -> str:
    return f"{inst.fixmedins_code}20261122130000{next(_seq) % 10_000:04d}"


def settle(router, inst: pb.Institution, mid: str, psn: str, amount: int) -> pb.SetlInfo:
    return router.stub.Settle(pb.SettleRequest(msgid=mid, institution=inst, input=pb.SettleInput(
        psn_no=psn, psn_part_amt_fen=amount, medfee_sumamt_fen=amount, acct_used_flag="1",
        category=cpb.CATEGORY_OUTPATIENT)), timeout=T).setlinfo


def test_a_2601_undoes_its_own_message_whose_msgid_another_institution_used_too(start_router, national: National):
    router = start_router(batch=False)
    hb = national.reg("13")
    mine, theirs = enroll(hb), enroll(hb)
    credit(hb, mine, 100_000)
    credit(hb, theirs, 100_000)
    shared = msgid(GROUP)  # the group's shape, sent by the group and by the campus
    settle(router, GROUP, shared, theirs, 700)
    assert settle(router, CAMPUS, shared, mine, 1_000).setl_id == shared
    out = router.stub.Undo(pb.UndoRequest(msgid=msgid(CAMPUS), institution=CAMPUS, psn_no=mine, omsgid=shared,
                                          oinfno="2207"), timeout=T)
    assert (out.outcome, out.setl_id, out.acct_pay_fen) == ("REVERSED", shared, 1_000), out
    assert (balance(hb, mine), balance(hb, theirs)) == (100_000, 99_300)
    # The group's own message is not the campus's to undo, nor is one only the group sent.
    with pytest.raises(grpc.RpcError) as ei:
        router.stub.Undo(pb.UndoRequest(msgid=msgid(CAMPUS), institution=CAMPUS, psn_no=theirs,
                                        omsgid=settle(router, GROUP, msgid(GROUP), theirs, 300).setl_id,
                                        oinfno="2207"), timeout=T)
    assert reason(ei.value) == "ORIGINAL_OF_ANOTHER_INSTITUTION"
    assert balance(hb, theirs) == 99_000
