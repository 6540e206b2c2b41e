from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, balance, bind, credit, enroll, settle


def test_employee_pays_for_resident_child_through_grpc(hebei):
    stub = hebei.stub
    parent = enroll(stub)
    child = enroll(stub, itype=RESIDENT, birth="20150101")
    assert credit(stub, parent, 50_000) == 50_000
    bind(stub, parent, child)
    res = settle(stub, child, 12_000)
    assert (res.acct_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen) == (0, 12_000, 0)
    assert res.helper_id_number == parent
    assert balance(stub, parent) == 38_000
    got = stub.GetSettlement(pb.GetSettlementRequest(settlement_id=res.settlement_id)).result
    assert got.mulaid_pay_fen == 12_000 and got.state == "SETTLED"
