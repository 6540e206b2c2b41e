"""A province registry that answers amiss (SPEC §6, §7): the router must not take a malformed answer
for a settlement. A SettleBatch item answered with neither a result nor an error, and a 2206 / 2207
whose answer is not a split of the bill asked for (another person, another amount, parts that do
not add up to it), are answered DOWNSTREAM_ERROR within the caller's deadline, the msgid's claim
kept (the registry may have settled: a resend with the same msgid is answered as it did), never a
success the hospital would book. A real router and Redis in front of a gRPC registry that answers
as it is told."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from conftest import LoopThread, RunningRouter
from medaid.common.errors import error_info
from medaid.common.redis_server import RedisServer
from medaid.common.server import start_server
from medaid.common.v1 import common_pb2 as cpb
from medaid.directory import Directory
from medaid.registry.client import Registries
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.service import Router
from medaid.router.servicer import register as register_router
from medaid.router.v1 import router_pb2 as pb
from support import new_id, reason

HEBEI = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
T = 10.0
MSGID = "H13010100001202611221000004201"


class Answers(rpb_grpc.RegistryServiceServicer):
    """Province 13's registry as a test makes it answer: `result(request)` is the settlement it
    answers to PreSettle, Settle and each SettleBatch item, `outcome(request)` a SettleBatch item's."""

    def __init__(self) -> None:
        self.result: Callable[[Any], rpb.SettlementResult] = lambda req: rpb.SettlementResult()
        self.outcome: Callable[[Any], rpb.SettleOutcome] | None = None
        self.fails = False  # every call fails inside, naming the patient (gRPC's UNKNOWN, no ErrorInfo)
        self.calls = 0
        self.person: Callable[[Any], rpb.Person] = lambda req: rpb.Person()

    async def GetPerson(self, request: Any, context: Any) -> rpb.GetPersonResponse:
        return rpb.GetPersonResponse(person=self.person(request))

    async def ListBindings(self, request: Any, context: Any) -> rpb.ListBindingsResponse:
        return rpb.ListBindingsResponse()

    async def PreSettle(self, request: Any, context: Any) -> rpb.PreSettleResponse:
        return rpb.PreSettleResponse(result=self.result(request))

    async def Settle(self, request: Any, context: Any) -> rpb.SettleResponse:
        self.calls += 1
        if self.fails:
            raise ValueError(f"cannot settle for {request.patient_id_number}")
        return rpb.SettleResponse(result=self.result(request))

    async def SettleBatch(self, request: Any, context: Any) -> rpb.SettleBatchResponse:
        self.calls += 1
        if self.fails:
            raise ValueError(f"cannot settle for {request.requests[0].patient_id_number}")
        return rpb.SettleBatchResponse(outcomes=[
            self.outcome(r) if self.outcome is not None else
            rpb.SettleOutcome(response=rpb.SettleResponse(result=self.result(r))) for r in request.requests])


def split(req: Any, *, patient: str = "", amount: int = -1, cash: int = -1) -> rpb.SettlementResult:
    """The registry's answer to `req` (own account pays all), with what the test makes wrong."""
    return rpb.SettlementResult(
        settlement_id=getattr(req, "request_id", ""), patient_id_number=patient or req.patient_id_number,
        amount_fen=req.amount_fen if amount < 0 else amount, acct_pay_fen=req.amount_fen,
        cash_pay_fen=0 if cash < 0 else cash, state="SETTLED", insured_region="130100",
        institution_code=req.institution_code, settled_at_unix_ms=1)


@pytest.fixture(params=[True, False], ids=["batched", "one-by-one"])
def province(request: Any, loop_thread: LoopThread, redis_server: RedisServer,
             rdb: redis.Redis) -> Iterator[tuple[Answers, RunningRouter]]:
    answers = Answers()
    name = rpb.DESCRIPTOR.services_by_name["RegistryService"].full_name

    def serve(s: grpc.aio.Server) -> list[str]:
        rpb_grpc.add_RegistryServiceServicer_to_server(answers, s)
        return [name]

    async def boot() -> tuple[Any, RunningRouter]:
        registry = await start_server(serve, port=0)
        client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
        router = Router(Directory(client), Registries({"13": f"127.0.0.1:{registry.port}"}), batch=request.param)
        running = await start_server(lambda s: register_router(s, router), port=0)
        return registry, RunningRouter(router, running.port, running.server, client)

    registry, rr = loop_thread.run(boot())
    try:
        yield answers, rr
    finally:
        rr.channel.close()

        async def shutdown() -> None:
            await rr.server.stop(0)
            await rr.router.close()
            await rr.client.aclose()
            await registry.server.stop(0)

        loop_thread.run(shutdown())


def settle_req(patient: str, amount: int = 1_000) -> pb.SettleRequest:
    return pb.SettleRequest(msgid=MSGID, institution=HEBEI, input=pb.SettleInput(
        psn_no=patient, insuplc_admdvs="130100", psn_part_amt_fen=amount, acct_used_flag="1",
        category=cpb.CATEGORY_OUTPATIENT))


def claim(r: redis.Redis) -> dict[bytes, bytes]:
    return r.hgetall(f"rtr:{{mid:{MSGID}}}")


@pytest.mark.parametrize("province", [True], ids=["batched"], indirect=True)
def test_a_batch_item_answered_with_neither_result_nor_error_is_a_downstream_error(province, rdb):
    answers, rr = province
    answers.outcome = lambda req: rpb.SettleOutcome()
    with pytest.raises(grpc.RpcError) as err:
        rr.stub.Settle(settle_req(new_id()), timeout=T)
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNKNOWN, "DOWNSTREAM_ERROR"), err.value
    assert claim(rdb) and b"done" not in claim(rdb)  # the registry may have settled: the msgid stays bound


WRONG = {
    "another person": lambda p: (lambda req: split(req, patient=new_id())),
    "another amount": lambda p: (lambda req: split(req, amount=req.amount_fen + 1)),
    "parts that do not add up": lambda p: (lambda req: split(req, cash=1)),
    "an empty result": lambda p: (lambda req: rpb.SettlementResult()),
}


@pytest.mark.parametrize("wrong", WRONG)
def test_a_2207_answered_with_a_split_of_another_bill_is_not_a_settlement(province, rdb, wrong):
    answers, rr = province
    patient = new_id()
    answers.result = WRONG[wrong](patient)
    with pytest.raises(grpc.RpcError) as err:
        rr.stub.Settle(settle_req(patient), timeout=T)
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNKNOWN, "DOWNSTREAM_ERROR"), err.value
    assert patient not in (err.value.details() or "")
    assert claim(rdb) and b"done" not in claim(rdb)
    # Once the registry answers the same msgid as it should, that answer is the hospital's.
    answers.result = split
    got = rr.stub.Settle(settle_req(patient), timeout=T).setlinfo
    assert (got.psn_no, got.psn_part_amt_fen, got.acct_pay_fen, got.psn_cash_pay_fen) == (patient, 1_000, 1_000, 0)
    assert claim(rdb)[b"done"] == b"1"


@pytest.mark.parametrize("wrong", WRONG)
def test_a_2206_answered_with_a_split_of_another_bill_is_refused(province, wrong):
    answers, rr = province
    patient = new_id()
    answers.result = WRONG[wrong](patient)
    req = settle_req(patient)
    with pytest.raises(grpc.RpcError) as err:
        rr.stub.PreSettle(pb.PreSettleRequest(msgid=req.msgid, institution=req.institution, input=req.input),
                          timeout=T)
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNKNOWN, "DOWNSTREAM_ERROR"), err.value


def test_a_well_formed_answer_is_answered(province):
    answers, rr = province
    answers.result = split
    patient = new_id()
    got = rr.stub.Settle(settle_req(patient, 2_500), timeout=T).setlinfo
    assert (got.psn_no, got.psn_part_amt_fen, got.acct_pay_fen) == (patient, 2_500, 2_500)


def test_a_registry_failure_in_its_own_words_reaches_the_hospital_without_the_id_number(province, rdb):
    """gRPC answers a handler's exception UNKNOWN with the exception's text; the router passes the code
    on (DOWNSTREAM_ERROR) but not a person's id number in that text."""
    answers, rr = province
    answers.fails = True
    patient = new_id()
    with pytest.raises(grpc.RpcError) as err:
        rr.stub.Settle(settle_req(patient), timeout=T)
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNKNOWN, "DOWNSTREAM_ERROR"), err.value
    assert patient not in (err.value.details() or ""), err.value.details()
    assert claim(rdb) and b"done" not in claim(rdb)


def person(req: Any, *, id_number: str = "", region: str = "130100", balance: int = 5_000) -> rpb.Person:
    """The registry's answer to GetPerson `req`, with what the test makes wrong."""
    return rpb.Person(id_number=id_number or req.id_number, name="张三", status=cpb.PERSON_STATUS_ACTIVE,
                      insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE, pooling_region=region, province="13",
                      has_personal_account=True, balance_fen=balance)


WRONG_PERSON = {
    "an empty answer": lambda req: rpb.Person(),
    "another person": lambda req: person(req, id_number=new_id()),
    "no insured place": lambda req: person(req, region=""),
    "a place of another province": lambda req: person(req, region="110000"),
    "a negative balance": lambda req: person(req, balance=-1),
}


@pytest.mark.parametrize("given", ["130100", ""], ids=["place given", "place left empty"])
@pytest.mark.parametrize("wrong", WRONG_PERSON)
@pytest.mark.parametrize("province", [False], ids=["one-by-one"], indirect=True)
def test_a_1101_answered_with_no_person_or_another_is_a_downstream_error(province, rdb, wrong, given):
    """A registry that answers GetPerson with an empty person (or another one, or one insured nowhere
    in its province) has not answered the 1101: DOWNSTREAM_ERROR (retry with the same msgid), never
    INSURED_PLACE_MISMATCH "(unknown)" telling the cashier to correct a field that was right, nor a
    1101 the hospital would take for the patient's."""
    answers, rr = province
    patient = new_id()
    if not given:  # the province comes from the national directory
        rdb.hset(Directory.key(patient), mapping={"province": "13", "status": "ACTIVE"})
    answers.person = WRONG_PERSON[wrong]
    req = pb.QueryPersonRequest(msgid=MSGID, institution=HEBEI, mdtrt_cert_type="02", mdtrt_cert_no=patient,
                                insuplc_admdvs=given)
    with pytest.raises(grpc.RpcError) as err:
        rr.stub.QueryPerson(req, timeout=T)
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNKNOWN, "DOWNSTREAM_ERROR"), err.value
    assert patient not in (err.value.details() or "")
    # Once the registry answers as it should, the 1101 is the patient's.
    answers.person = person
    got = rr.stub.QueryPerson(req, timeout=T)
    assert (got.baseinfo.psn_no, got.insuinfo[0].insuplc_admdvs, got.insuinfo[0].balc_fen) == (patient, "130100", 5_000)


@pytest.mark.parametrize("province", [False], ids=["one-by-one"], indirect=True)
def test_a_province_no_registry_here_serves_names_the_field_only_where_it_was_sent(province, rdb):
    """UNKNOWN_INSURED_PLACE names insuplc_admdvs (ErrorInfo `field`, the gateway's where-part) when
    the caller sent it; when the caller left it empty and the province came from the national
    directory, there is no field to correct and none is named."""
    _, rr = province
    patient = new_id()
    rdb.hset(Directory.key(patient), mapping={"province": "44", "status": "ACTIVE"})  # 广东: no registry here
    for given, field in (("", None), ("440100", "insuplc_admdvs")):
        for call, req in (
                (rr.stub.QueryPerson, pb.QueryPersonRequest(msgid=MSGID, institution=HEBEI, mdtrt_cert_type="02",
                                                            mdtrt_cert_no=patient, insuplc_admdvs=given)),
                (rr.stub.Settle, pb.SettleRequest(msgid=MSGID, institution=HEBEI, input=pb.SettleInput(
                    psn_no=patient, insuplc_admdvs=given, psn_part_amt_fen=1_000, acct_used_flag="1",
                    category=cpb.CATEGORY_OUTPATIENT)))):
            with pytest.raises(grpc.RpcError) as err:
                call(req, timeout=T)
            info = error_info(err.value)
            assert info is not None and info.reason == "UNKNOWN_INSURED_PLACE", err.value
            assert (err.value.code(), info.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, field), given
    assert not claim(rdb)
