"""SPEC §1 rules the other suites leave unpinned, on a real 河北 (13) registry: an id number whose
birth date lies after today (Asia/Shanghai) is no valid 公民身份号码; a 16th birthday is judged on
the Asia/Shanghai date, even when it is still yesterday in UTC; a FLEXIBLE person has a personal
account in tier 2 only."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from medaid.common.clock import SHANGHAI, FixedClock
from medaid.common.idnumber import make
from medaid.registry.v1 import registry_pb2 as pb
from support import EMPLOYEE, FLEXIBLE, RESIDENT, balance, bind, credit, enroll, reason, rid, settle, snapshot

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


def at(shanghai: dt.datetime) -> FixedClock:
    return FixedClock(int(shanghai.timestamp() * 1000))


@pytest.mark.parametrize(("birth", "needs_face"), [("20101121", True), ("20101122", True), ("20101123", False)])
def test_the_sixteenth_birthday_is_judged_on_the_shanghai_date(start_registry, rdb, birth, needs_face):
    """07:30 on 2026-11-22 in Shanghai is still 2026-11-21 in UTC: a member born 2010-11-22 is 16."""
    running = start_registry("13", clock=at(dt.datetime(2026, 11, 22, 7, 30, tzinfo=SHANGHAI)))
    assert dt.datetime(2026, 11, 22, 7, 30, tzinfo=SHANGHAI).astimezone(dt.UTC).day == 21
    stub = running.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth=birth)
    if needs_face:
        refused(rdb, lambda: bind(stub, helper, member, verification=None), grpc.StatusCode.FAILED_PRECONDITION,
                "VERIFICATION_REQUIRED")
        assert bind(stub, helper, member).binding.active
    else:
        assert bind(stub, helper, member, verification=None).binding.active


def test_a_sixteenth_birthday_on_29_february_is_a_date(start_registry, rdb):
    """Born 2008-02-29: 16 on 2024-02-29 (a leap day), 15 the day before."""
    running = start_registry("13", clock=at(dt.datetime(2024, 2, 28, 12, 0, tzinfo=SHANGHAI)))
    stub = running.stub
    helper = enroll(stub)
    member = enroll(stub, itype=RESIDENT, birth="20080229")
    assert bind(stub, helper, member, verification=None).binding.active
    running.clock.set(int(dt.datetime(2024, 2, 29, 0, 0, tzinfo=SHANGHAI).timestamp() * 1000))
    other = enroll(stub, itype=RESIDENT, birth="20080229")
    refused(rdb, lambda: bind(stub, helper, other, verification=None), grpc.StatusCode.FAILED_PRECONDITION,
            "VERIFICATION_REQUIRED")


@pytest.mark.parametrize(("tier", "has_account"), [(1, False), (2, True)])
def test_a_flexible_person_has_a_personal_account_in_tier_2_only(hebei, rdb, tier, has_account):
    stub = hebei.stub
    patient = enroll(stub, itype=FLEXIBLE, tier=tier)
    person = stub.GetPerson(pb.GetPersonRequest(id_number=patient)).person
    assert person.has_personal_account is has_account
    if has_account:
        assert credit(stub, patient, 1_000) == 1_000
        res = settle(stub, patient, 600)
        assert (res.acct_pay_fen, res.cash_pay_fen) == (600, 0)
        assert balance(stub, patient) == 400
    else:
        req = pb.CreditAccountRequest(request_id=rid("credit"), id_number=patient, amount_fen=1_000,
                                      kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
        with pytest.raises(grpc.RpcError) as ei:
            stub.CreditAccount(req)
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        res = settle(stub, patient, 600)
        assert (res.acct_pay_fen, res.cash_pay_fen) == (0, 600)


def test_age_and_sex_derive_from_the_id_number(hebei):
    stub = hebei.stub
    pid = make("130102", "20101122", "121")  # 17th digit odd: male; 16 today
    stub.EnrollPerson(pb.EnrollPersonRequest(request_id=rid("enroll"), id_number=pid, name="张三",
                                             insurance_type=EMPLOYEE, pooling_region="130100"))
    person = stub.GetPerson(pb.GetPersonRequest(id_number=pid)).person
    assert (person.birth_date, person.sex) == ("20101122", "M")
