"""SPEC §1 rules the other suites leave unpinned, on a real 河北 (13) registry: an id number whose
birth date lies after today (Asia/Shanghai) is no valid 公民身份号码."""

from __future__ import annotations

import grpc
import pytest
from medaid.common.idnumber import make
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, enroll, reason, rid, snapshot

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def refused(rdb, call, code, why):
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        call()
    assert ei.value.code() == code, (ei.value.code(), ei.value.details())
    assert reason(ei.value) == why, ei.value.details()
    assert snapshot(rdb) == before, f"refused {why} wrote to Redis"


@pytest.mark.parametrize("birth", ["20261123", "20270101", "20991231"])
def test_enrolling_an_id_number_born_after_today_is_refused(hebei, rdb, birth):
    """Today is 2026-11-22 (Asia/Shanghai): nobody holding an id number is born tomorrow."""
    pid = make("130102", birth, "001")
    req = pb.EnrollPersonRequest(request_id=rid("enroll"), id_number=pid, name="张三",
                                 insurance_type=RESIDENT, pooling_region="130100")
    refused(rdb, lambda: hebei.stub.EnrollPerson(req), INVALID, "INVALID_ID_NUMBER")


def test_an_id_number_born_today_is_taken(hebei):
    assert enroll(hebei.stub, itype=RESIDENT, birth="20261122")
