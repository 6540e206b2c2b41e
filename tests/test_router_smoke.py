"""Router smoke test across real processes: 1101 → 2207 routed by the directory, refusal passthrough."""

from __future__ import annotations

import grpc
import pytest
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from support import RESIDENT, bind, credit, enroll, reason


@pytest.fixture(scope="module")
def topo():
    t = Topology.start(clock=DEMO_CLOCK)
    try:
        yield t
    finally:
        t.stop()


def msgid(code: str, seq: int) -> str:
    return f"{code}20261122100000{seq:04d}"


def test_lookup_and_settle_routed_by_directory(topo):
    with grpc.insecure_channel(topo.address("registry-13")) as ch13, \
            grpc.insecure_channel(topo.address("router")) as chr_:
        hebei = rpb_grpc.RegistryServiceStub(ch13)
        router = pb_grpc.RouterServiceStub(chr_)
        helper = enroll(hebei)
        child = enroll(hebei, itype=RESIDENT, birth="20160101")
        credit(hebei, helper, 30_000)
        bind(hebei, helper, child)
        inst = pb.Institution(fixmedins_code="H11010500001", mdtrtarea_admvs="110000")  # a 北京 hospital
        info = router.QueryPerson(pb.QueryPersonRequest(msgid=msgid("H11010500001", 1), institution=inst,
                                                        mdtrt_cert_type="02", mdtrt_cert_no=child))
        assert info.insuinfo[0].insuplc_admdvs == "130100"
        assert [h.psn_no for h in info.helpers] == [helper]
        req = pb.SettleRequest(msgid=msgid("H11010500001", 2), institution=inst, input=pb.SettleInput(
            psn_no=child, psn_part_amt_fen=10_000, acct_used_flag="1", category=cpb.CATEGORY_OUTPATIENT))
        s1 = router.Settle(req).setlinfo
        s2 = router.Settle(req).setlinfo
        assert s1 == s2 and s1.acct_mulaid_pay_fen == 10_000 and s1.mulaid_helper_psn_no == helper
        too_much = pb.SettleRequest(msgid=msgid("H11010500001", 3), institution=inst, input=pb.SettleInput(
            psn_no=child, psn_part_amt_fen=10_000, acct_used_flag="1", category=cpb.CATEGORY_FITNESS))
        with pytest.raises(grpc.RpcError) as err:
            router.Settle(too_much)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(err.value) == "CATEGORY_NOT_PAYABLE"
