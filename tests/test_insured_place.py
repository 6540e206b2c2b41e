"""The insured place (insuplc_admdvs, SPEC §6) a 2206/2207 answers is the person's 统筹区, as 1101
gives it, never a province-level code; an insuplc_admdvs the caller gives that contradicts the
person's registry record is refused (INSURED_PLACE_MISMATCH) and writes nothing. Real registries,
router and Redis, in-process; both the batched and the one-by-one router paths."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import redis
from conftest import National, RunningRouter
from medaid.common.errors import error_info
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.v1 import router_pb2 as pb
from support import balance, credit, enroll, new_id, snapshot

HEBEI = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")  # 石家庄
BEIJING = pb.Institution(fixmedins_code="H11010500001", mdtrtarea_admvs="110000")
T = 10.0
_seq = itertools.count(1)


def new_msgid(inst: pb.Institution) -> str:
    return f"{inst.fixmedins_code}20261122110000{next(_seq) % 10_000:04d}"


def settle_input(psn: str, insuplc: str = "", amount: int = 1_000) -> pb.SettleInput:
    return pb.SettleInput(psn_no=psn, insuplc_admdvs=insuplc, psn_part_amt_fen=amount, acct_used_flag="1",
                          category=cpb.CATEGORY_OUTPATIENT)


def settle(router: RunningRouter, inst: pb.Institution, psn: str, insuplc: str = "", *,
           mid: str = "") -> pb.SetlInfo:
    return router.stub.Settle(pb.SettleRequest(msgid=mid or new_msgid(inst), institution=inst,
                                               input=settle_input(psn, insuplc)), timeout=T).setlinfo


def presettle(router: RunningRouter, inst: pb.Institution, psn: str, insuplc: str = "") -> pb.SetlInfo:
    return router.stub.PreSettle(pb.PreSettleRequest(msgid=new_msgid(inst), institution=inst,
                                                     input=settle_input(psn, insuplc)), timeout=T).setlinfo


def state(r: redis.Redis) -> dict[bytes, Any]:
    """Registries, directory and router claims (the wallet's maintenance lock ticks on its own)."""
    return {k: v for k, v in snapshot(r).items() if k.startswith((b"reg:", b"dir:", b"rtr:"))}


@pytest.fixture(params=[True, False], ids=["batched", "one-by-one"])
def router(request: Any, start_router: Callable[..., RunningRouter]) -> RunningRouter:
    return start_router(batch=request.param)


def test_2206_2207_answer_the_persons_pooling_region(router: RunningRouter, national: National):
    hb, gs = national.reg("13"), national.reg("62")
    tangshan = enroll(hb, region="130200", division="130203")  # 唐山, not the province's capital
    credit(hb, tangshan, 10_000)
    lanzhou = enroll(gs, region="620100", division="620102")
    credit(gs, lanzhou, 10_000)
    for inst in (HEBEI, BEIJING):
        assert presettle(router, inst, tangshan).insuplc_admdvs == "130200"
        assert settle(router, inst, tangshan).insuplc_admdvs == "130200"
        assert settle(router, inst, tangshan, "130200").insuplc_admdvs == "130200"
        assert presettle(router, inst, lanzhou, "620100").insuplc_admdvs == "620100"
        assert settle(router, inst, lanzhou).insuplc_admdvs == "620100"
    # The same place 1101 gives.
    info = router.stub.QueryPerson(pb.QueryPersonRequest(msgid=new_msgid(HEBEI), institution=HEBEI,
                                                         mdtrt_cert_type="02", mdtrt_cert_no=tangshan), timeout=T)
    assert info.insuinfo[0].insuplc_admdvs == "130200"
    assert balance(hb, tangshan) == 6_000 and balance(gs, lanzhou) == 8_000


def test_contradicting_insuplc_is_refused_and_writes_nothing(router: RunningRouter, national: National,
                                                              rdb: redis.Redis):
    hb = national.reg("13")
    p = enroll(hb, region="130200", division="130203")
    credit(hb, p, 10_000)
    done = settle(router, HEBEI, p)
    before = state(rdb)
    mid = new_msgid(HEBEI)
    for place in ("130100", "130000", "139900"):  # another 统筹区 of the person's province, the province code
        calls = (
            (router.stub.Settle, pb.SettleRequest(msgid=mid, institution=HEBEI, input=settle_input(p, place))),
            (router.stub.PreSettle, pb.PreSettleRequest(msgid=new_msgid(HEBEI), institution=HEBEI,
                                                        input=settle_input(p, place))),
            (router.stub.ReverseSettlement, pb.ReverseSettlementRequest(
                msgid=new_msgid(HEBEI), institution=HEBEI, setl_id=done.setl_id, psn_no=p, insuplc_admdvs=place)),
        )
        for call, req in calls:
            with pytest.raises(grpc.RpcError) as err:
                call(req, timeout=T)
            info = error_info(err.value)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
            assert info is not None and info.reason == "INSURED_PLACE_MISMATCH"
            assert info.metadata["field"] == "insuplc_admdvs"
            assert "130200" in err.value.details() and p not in err.value.details()
    assert state(rdb) == before
    assert balance(hb, p) == 9_000
    # The corrected message under the same msgid settles.
    assert settle(router, HEBEI, p, "130200", mid=mid).acct_pay_fen == 1_000
    assert balance(hb, p) == 8_000


def test_insuplc_of_another_province_than_the_persons_is_a_mismatch_not_an_unknown_person(
        router: RunningRouter, national: National, rdb: redis.Redis):
    """insuplc_admdvs still decides where to ask. A province that does not insure the person, asked for
    someone the national directory knows insured in another, is the caller's insuplc_admdvs
    contradicting the person's place (INSURED_PLACE_MISMATCH, naming the place 1101 answers), for
    1101, 2206 and 2207 alike, and writes nothing: the cashier corrects the field, and the corrected
    2207 under the same msgid settles. A person no province insures stays PERSON_NOT_FOUND, and the
    registry asked directly keeps its own answer."""
    hb, bj = national.reg("13"), national.reg("11")
    p = enroll(hb, region="130200", division="130203")
    credit(hb, p, 10_000)
    settle(router, HEBEI, p)
    before = state(rdb)
    mid = new_msgid(HEBEI)
    for place in ("110000", "620100"):
        calls = (
            (router.stub.QueryPerson, pb.QueryPersonRequest(msgid=new_msgid(HEBEI), institution=HEBEI,
                                                            mdtrt_cert_type="02", mdtrt_cert_no=p,
                                                            insuplc_admdvs=place)),
            (router.stub.PreSettle, pb.PreSettleRequest(msgid=new_msgid(HEBEI), institution=HEBEI,
                                                        input=settle_input(p, place))),
            (router.stub.Settle, pb.SettleRequest(msgid=mid, institution=HEBEI, input=settle_input(p, place))),
        )
        for call, req in calls:
            with pytest.raises(grpc.RpcError) as err:
                call(req, timeout=T)
            assert_mismatch(err.value, "130200")
            assert p not in (err.value.details() or "")
    assert state(rdb) == before
    assert balance(hb, p) == 9_000
    assert settle(router, HEBEI, p, "130200", mid=mid).acct_pay_fen == 1_000
    assert balance(hb, p) == 8_000
    with pytest.raises(grpc.RpcError) as direct:
        bj.Settle(rpb.SettleRequest(request_id="direct-1", patient_id_number=p, amount_fen=1_000, use_account=True,
                                    category=cpb.CATEGORY_OUTPATIENT, institution_code=HEBEI.fixmedins_code))
    assert error_info(direct.value).reason == "PERSON_NOT_FOUND"  # type: ignore[union-attr]
    stranger = new_id("130102", "19700707")  # valid, enrolled nowhere
    for given in ("110000", "130100"):
        with pytest.raises(grpc.RpcError) as err:
            settle(router, HEBEI, stranger, given)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(err.value).reason == "PERSON_NOT_FOUND"  # type: ignore[union-attr]
    assert balance(hb, p) == 8_000


def move_to_beijing(national: National, p: str) -> None:
    national.reg("13").UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=f"status-{p}", id_number=p, status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"),
        timeout=T)
    national.reg("11").EnrollPerson(rpb.EnrollPersonRequest(
        request_id=f"enroll-{p}", id_number=p, name="张三", insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
        pooling_region="110000"), timeout=T)


def query(router: RunningRouter, psn: str, insuplc: str = "") -> pb.InsuInfo:
    return router.stub.QueryPerson(pb.QueryPersonRequest(
        msgid=new_msgid(HEBEI), institution=HEBEI, mdtrt_cert_type="02", mdtrt_cert_no=psn,
        insuplc_admdvs=insuplc), timeout=T).insuinfo[0]


def reverse(router: RunningRouter, setl_id: str, psn: str, insuplc: str) -> pb.ReverseSettlementResponse:
    return router.stub.ReverseSettlement(pb.ReverseSettlementRequest(
        msgid=new_msgid(HEBEI), institution=HEBEI, setl_id=setl_id, psn_no=psn, insuplc_admdvs=insuplc),
        timeout=T)


def assert_mismatch(err: grpc.RpcError, named: str) -> None:
    info = error_info(err)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert info is not None and info.reason == "INSURED_PLACE_MISMATCH", err.details()
    assert info.metadata["field"] == "insuplc_admdvs"
    assert named in (err.details() or "")


def test_a_2208_after_a_move_accepts_the_place_1101_answers_now(router: RunningRouter, national: National,
                                                                rdb: redis.Redis):
    """A 河北 settlement of a person who has since moved to 北京: the hospital's 2208 may name the
    settlement's own insured place or the one 1101 answers for the person now (as 5203 and 2601
    accept); any other place is refused and writes nothing."""
    hb = national.reg("13")
    p = enroll(hb, region="130100")
    credit(hb, p, 10_000)
    first, second, third = (settle(router, HEBEI, p) for _ in range(3))
    assert first.insuplc_admdvs == "130100" and balance(hb, p) == 7_000
    move_to_beijing(national, p)
    assert query(router, p).insuplc_admdvs == "110000"
    before = state(rdb)
    for place in ("130200", "110100", "620100"):  # not the settlement's place, not where they are insured
        with pytest.raises(grpc.RpcError) as err:
            reverse(router, first.setl_id, p, place)
        assert_mismatch(err.value, "130100")
        assert p not in (err.value.details() or "")
    assert state(rdb) == before
    assert reverse(router, first.setl_id, p, "110000").acct_refund_fen == 1_000
    assert reverse(router, second.setl_id, p, "130100").acct_refund_fen == 1_000
    assert reverse(router, third.setl_id, p, "").acct_refund_fen == 1_000
    assert balance(hb, p) == 10_000 and balance(national.reg("11"), p) == 0


def test_a_2208_naming_a_province_that_does_not_insure_the_person_is_refused(router: RunningRouter,
                                                                           national: National,
                                                                           rdb: redis.Redis):
    hb = national.reg("13")
    p = enroll(hb, region="130100")
    credit(hb, p, 10_000)
    done = settle(router, HEBEI, p)
    before = state(rdb)
    with pytest.raises(grpc.RpcError) as err:
        reverse(router, done.setl_id, p, "110000")
    assert_mismatch(err.value, "130100")
    assert state(rdb) == before and balance(hb, p) == 9_000


def test_1101_refuses_an_insuplc_that_contradicts_the_record(router: RunningRouter, national: National):
    """1101 applies the rule of 2206/2207: another 统筹区 of the person's province, or the province's own
    code, is INSURED_PLACE_MISMATCH, not answered silently with the person's own place."""
    hb = national.reg("13")
    p = enroll(hb, region="130100")
    credit(hb, p, 10_000)
    assert query(router, p, "130100").insuplc_admdvs == "130100"
    for place in ("130200", "130000", "139900"):
        with pytest.raises(grpc.RpcError) as err:
            query(router, p, place)
        assert_mismatch(err.value, "130100")
        with pytest.raises(grpc.RpcError) as settled:
            settle(router, HEBEI, p, place)
        assert error_info(settled.value).reason == "INSURED_PLACE_MISMATCH"  # type: ignore[union-attr]
    # A moved person's old place answers that place's record: ended (终止), with its balance.
    move_to_beijing(national, p)
    old = query(router, p, "130100")
    assert (old.insuplc_admdvs, old.psn_insu_stas, old.balc_fen) == ("130100", cpb.PERSON_STATUS_TERMINATED, 10_000)
    assert query(router, p, "110000").psn_insu_stas == cpb.PERSON_STATUS_ACTIVE
    with pytest.raises(grpc.RpcError) as err:
        query(router, p, "130200")
    assert_mismatch(err.value, "130100")


def query_settlement(router: RunningRouter, setl_id: str, psn: str, insuplc: str) -> pb.QuerySettlementResponse:
    return router.stub.QuerySettlement(pb.QuerySettlementRequest(
        msgid=new_msgid(HEBEI), institution=HEBEI, setl_id=setl_id, psn_no=psn, insuplc_admdvs=insuplc), timeout=T)


def test_a_5203_naming_a_place_that_contradicts_the_settlement_is_refused_as_a_2208_is(
        router: RunningRouter, national: National, rdb: redis.Redis):
    """A 5203's insuplc_admdvs is judged as a 2208's and a 2601's: empty, the settlement's own insured
    place or the place insuring the person now are answered; another 统筹区, the province's code or
    another province is INSURED_PLACE_MISMATCH, with or without psn_no, for a settlement and for its
    refund record alike, not answered as if the place were right."""
    hb = national.reg("13")
    p = enroll(hb, region="130200", division="130203")
    credit(hb, p, 10_000)
    done, refunded = settle(router, HEBEI, p), settle(router, HEBEI, p)
    refund = reverse(router, refunded.setl_id, p, "").reversal_id
    before = state(rdb)
    for setl_id in (done.setl_id, refund):
        for psn in (p, ""):
            for place in ("130100", "130000", "139900", "110000"):
                with pytest.raises(grpc.RpcError) as err:
                    query_settlement(router, setl_id, psn, place)
                assert_mismatch(err.value, "130200")
                assert p not in (err.value.details() or "")
            for place in ("130200", ""):
                assert query_settlement(router, setl_id, psn, place).settlement.setlinfo.setl_id == setl_id
    assert state(rdb) == before
    move_to_beijing(national, p)
    for place in ("110000", "130200", ""):
        assert query_settlement(router, done.setl_id, p, place).settlement.setlinfo.setl_id == done.setl_id
    with pytest.raises(grpc.RpcError) as err:
        query_settlement(router, done.setl_id, p, "620100")
    assert_mismatch(err.value, "130200")
