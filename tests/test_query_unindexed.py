"""5203 of a settlement the router's index has no entry of (settled at a registry directly, or the
router's Redis lost the entry), sent without `psn_no` (the interface's 5203 does not need it): the
registries hold it, with the money, so it is found there as a 3202 row of it is, never answered
SETTLEMENT_NOT_FOUND (a HIS that took that at its word would collect the bill a second time). Only
this institution's settlement is found so.
"""

from __future__ import annotations

import itertools

import grpc
import pytest
import redis
from conftest import National
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.v1 import router_pb2 as pb
from support import credit, enroll, reason

INST = pb.Institution(fixmedins_code="H13010100077", mdtrtarea_admvs="130100")
OTHER = pb.Institution(fixmedins_code="H13010100088", mdtrtarea_admvs="130100")
T = 10.0
_seq = itertools.count(1)


def msgid(inst: pb.Institution = INST) -> str:
    return f"{inst.fixmedins_code}20261122140000{next(_seq) % 10_000:04d}"


def query(router, setl_id: str, inst: pb.Institution = INST, psn_no: str = "") -> pb.QuerySettlementResponse:
    return router.stub.QuerySettlement(pb.QuerySettlementRequest(msgid=msgid(inst), institution=inst,
                                                                 setl_id=setl_id, psn_no=psn_no), timeout=T)


def test_a_5203_without_psn_no_finds_a_settlement_the_index_lacks(start_router, national: National,
                                                                  rdb: redis.Redis):
    router = start_router(batch=False)
    hb, bj = national.reg("13"), national.reg("11")
    p = enroll(hb)
    q = enroll(bj, region="110000", birth="19700101")
    credit(hb, p, 100_000)
    credit(bj, q, 100_000)
    direct = hb.Settle(rpb.SettleRequest(
        request_id=msgid(), patient_id_number=p, amount_fen=300, use_account=True,
        category=cpb.CATEGORY_OUTPATIENT, institution_code=INST.fixmedins_code, institution_admdvs="130100")).result
    lost = router.stub.Settle(pb.SettleRequest(msgid=msgid(), institution=INST, input=pb.SettleInput(
        psn_no=q, psn_part_amt_fen=500, medfee_sumamt_fen=500, acct_used_flag="1", insuplc_admdvs="110000",
        category=cpb.CATEGORY_OUTPATIENT)), timeout=T).setlinfo
    index = f"rtr:{{inst:{INST.fixmedins_code}}}"
    rdb.hdel(f"{index}:info", lost.setl_id)
    rdb.zrem(f"{index}:setl", lost.setl_id)

    for setl_id, psn, acct in ((direct.settlement_id, p, 300), (lost.setl_id, q, 500)):
        got = query(router, setl_id).settlement
        assert (got.state, got.setlinfo.setl_id, got.setlinfo.psn_no, got.setlinfo.acct_pay_fen) == \
            ("SETTLED", setl_id, psn, acct), got
        assert query(router, setl_id, psn_no=psn).settlement == got
    # Another institution does not find it, by either shape of its id.
    for setl_id in (direct.settlement_id, msgid(OTHER)):
        with pytest.raises(grpc.RpcError) as ei:
            query(router, setl_id, inst=OTHER)
        assert reason(ei.value) == "SETTLEMENT_NOT_FOUND"
