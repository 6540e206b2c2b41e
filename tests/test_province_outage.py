"""One province's registry frozen (SIGSTOP: its port accepts, nothing answers) behind a running router.

The router gives every call to a registry its deadline (3 s). 2207s to one province travel as
SettleBatch calls, one batch on its way at a time, so a 2207 that arrives while a batch is stuck
waits for it: that wait counts against the same deadline, and the hospital hears the router's
retryable UNAVAILABLE / REGISTRY_UNAVAILABLE within it, never a bare DEADLINE_EXCEEDED of its own
client. Other provinces settle as usual meanwhile, and once the registry answers again each msgid,
resent unchanged, settles once.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from medaid.common import errors, rpc
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.claims import stale_after_s
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, GATEWAY_PATH, Topology
from support import RESIDENT, balance, bind, credit, enroll, reason

HOSPITAL = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
# A hospital's own deadline: longer than the router's, shorter than two of them.
CLIENT_DEADLINE_S = rpc.DEFAULT_DEADLINE_S * 1.6
_seq = iter(range(1, 10_000))


def msgid() -> str:
    return f"{HOSPITAL.fixmedins_code}20261122140000{next(_seq):04d}"


def settle_2207(patient: str, amount: int, mid: str, insuplc: str) -> pb.SettleRequest:
    return pb.SettleRequest(msgid=mid, institution=HOSPITAL, input=pb.SettleInput(
        psn_no=patient, insuplc_admdvs=insuplc, psn_part_amt_fen=amount, acct_used_flag="1",
        category=cpb.CATEGORY_OUTPATIENT, mdtrt_id=f"MZ{mid[-8:]}"))


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    t = Topology.start(provinces=("13", "11", "62"), wallet=False, gateway=True, clock=DEMO_CLOCK)
    try:
        yield t
    finally:
        for name in ("registry-11", "registry-62"):
            svc = t.services.get(name)
            if svc is not None and svc.proc.poll() is None:
                os.kill(svc.proc.pid, signal.SIGCONT)  # never leave a stopped process behind
        codes = t.stop()
        assert set(codes.values()) == {0}, codes


def timed(call: grpc.UnaryUnaryMultiCallable, request: pb.SettleRequest) -> tuple[float, object]:
    started = time.monotonic()
    try:
        answer: object = call(request, timeout=CLIENT_DEADLINE_S)
    except grpc.RpcError as exc:
        answer = exc
    return time.monotonic() - started, answer


def test_2207s_queued_behind_a_frozen_province_answer_within_the_routers_deadline(topo: Topology):
    with grpc.insecure_channel(topo.address("registry-13")) as c13, \
            grpc.insecure_channel(topo.address("registry-11")) as c11, \
            grpc.insecure_channel(topo.address("router")) as crt:
        hebei, beijing, router = rpb_grpc.RegistryServiceStub(c13), rpb_grpc.RegistryServiceStub(c11), \
            pb_grpc.RouterServiceStub(crt)
        h13 = enroll(hebei, name="张伟")
        p13 = enroll(hebei, itype=RESIDENT, birth="20160101", name="张小雨")
        h11 = enroll(beijing, name="李伟", region="110000", division="110101")
        p11 = enroll(beijing, itype=RESIDENT, birth="20160101", name="李小雨", region="110000", division="110101")
        for registry, helper, patient in ((hebei, h13, p13), (beijing, h11, p11)):
            credit(registry, helper, 50_000)
            bind(registry, helper, patient)
        frozen = topo.services["registry-11"].proc.pid
        sent = [settle_2207(p11, 1_000 + i, msgid(), "110000") for i in range(3)]
        os.kill(frozen, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(len(sent)) as pool:
                waiting = []
                for req in sent:  # the first leaves at once, the others queue behind its batch
                    waiting.append(pool.submit(timed, router.Settle, req))
                    time.sleep(0.3)
                # Another province is not held up by the frozen one.
                elapsed, other = timed(router.Settle, settle_2207(p13, 500, msgid(), ""))
                assert isinstance(other, pb.SettleResponse), other
                assert other.setlinfo.acct_mulaid_pay_fen == 500 and elapsed < 1.5, elapsed
                answers = [f.result() for f in waiting]
        finally:
            os.kill(frozen, signal.SIGCONT)
        for req, (elapsed, answer) in zip(sent, answers, strict=True):
            assert isinstance(answer, grpc.RpcError), (req.msgid, answer)
            info = errors.error_info(answer)
            assert (answer.code(), info.reason if info else None) == \
                (grpc.StatusCode.UNAVAILABLE, "REGISTRY_UNAVAILABLE"), (req.msgid, answer.code(), answer.details())
            assert elapsed < rpc.DEFAULT_DEADLINE_S + 1.0, (req.msgid, elapsed)
        # Back: each message, resent unchanged, settles once.
        deadline = time.monotonic() + 15
        for req in sent:
            while True:
                try:
                    s = router.Settle(req, timeout=CLIENT_DEADLINE_S).setlinfo
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
                    assert time.monotonic() < deadline, "province 11 did not settle again after SIGCONT"
                    time.sleep(0.2)
            assert (s.setl_id, s.acct_mulaid_pay_fen) == (req.msgid, req.input.psn_part_amt_fen)
            assert router.Settle(req, timeout=CLIENT_DEADLINE_S).setlinfo == s
        helper = beijing.GetPerson(rpb.GetPersonRequest(id_number=h11), timeout=CLIENT_DEADLINE_S).person
        assert helper.balance_fen == 50_000 - sum(r.input.psn_part_amt_fen for r in sent)


def test_downstream_health_names_every_hung_registry_within_one_check(topo: Topology):
    """Two provinces hang at once (SIGSTOP: their ports accept, nothing answers), as in a partition of
    the machines that host them. GetDownstreamHealth asks every downstream at the same time, each
    check bounded by its 1 s timeout, so the operator hears which ones are down after about one
    check, not one second per hung registry, and inside a deadline that two checks in a row outlast."""
    frozen = [topo.services[name].proc.pid for name in ("registry-11", "registry-62")]
    with grpc.insecure_channel(topo.address("router")) as crt:
        router = pb_grpc.RouterServiceStub(crt)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            health = router.GetDownstreamHealth(pb.GetDownstreamHealthRequest(), timeout=1.8)
            elapsed = time.monotonic() - started
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        assert {d.name: d.serving for d in health.downstream} == \
            {"registry-11": False, "registry-13": True, "registry-62": False}
        assert elapsed < 1.5, elapsed
        # Back: every registry answers its check again.
        again = router.GetDownstreamHealth(pb.GetDownstreamHealthRequest(), timeout=CLIENT_DEADLINE_S)
        assert all(d.serving for d in again.downstream), again


# How long after its last attempt began a msgid's unanswered attempts count as over.
STALE_S = stale_after_s(rpc.DEFAULT_DEADLINE_S)


def unavailable(err: object) -> bool:
    return isinstance(err, grpc.RpcError) and (err.code(), reason(err)) == \
        (grpc.StatusCode.UNAVAILABLE, "REGISTRY_UNAVAILABLE")


def wait_past_stale(answered: float) -> None:
    """Until the claim of an attempt answered at `answered` (time.monotonic()) is stale: its last
    attempt began before that answer, however long the gateway and the router took to claim it."""
    time.sleep(max(0.0, answered + STALE_S + 0.2 - time.monotonic()))


def gateway_2207(topo: Topology, mid: str, patient: str, amount_yuan: str, insuplc: str) -> dict[str, object]:
    """A 2207 envelope posted to the JSON gateway; its answer as JSON."""
    body = {"infno": "2207", "msgid": mid, "mdtrtarea_admvs": HOSPITAL.mdtrtarea_admvs, "insuplc_admdvs": insuplc,
            "recer_sys_code": "MBS_LOCAL", "dev_no": "", "dev_safe_info": "", "cainfo": "", "signtype": "SM2",
            "infver": "V1.0", "opter_type": "1", "opter": "0001", "opter_name": "收费员",
            "inf_time": "2026-11-22 10:00:00", "fixmedins_code": HOSPITAL.fixmedins_code, "fixmedins_name": "医院",
            "sign_no": "", "input": {"data": {
                "psn_no": patient, "mdtrt_cert_type": "02", "mdtrt_cert_no": patient, "med_type": "11",
                "medfee_sumamt": amount_yuan, "psn_setlway": "01", "mdtrt_id": f"MZ{mid[-8:]}",
                "chrg_bchno": f"CB{mid[-8:]}", "insutype": "310", "acct_used_flag": "1", "invono": "",
                "fulamt_ownpay_amt": "", "overlmt_selfpay": "", "preselfpay_amt": "", "inscp_scp_amt": ""}}}
    req = urllib.request.Request(f"http://{topo.address('gateway')}{GATEWAY_PATH}", method="POST",
                                 data=json.dumps(body, ensure_ascii=False).encode(),
                                 headers={"Content-Type": "application/json;charset=utf-8"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer: dict[str, object] = json.loads(resp.read())
    return answer


def gateway_reason(answer: dict[str, object]) -> str:
    output = answer["output"]
    assert answer["infcode"] == -1 and isinstance(output, dict), answer
    return str(output["medaid_ext"]["reason"])


def test_a_2207_unanswered_in_an_outage_then_refused_leaves_its_msgid_free(topo: Topology):
    """A 2207 sent with a wrong insuplc_admdvs while that province's registry is down is answered
    REGISTRY_UNAVAILABLE; resent unchanged once it is back, that registry does not know the patient,
    whom the directory knows insured in 河北, so it is refused by a rule (INSURED_PLACE_MISMATCH), which
    leaves nothing behind: the corrected message under the same msgid
    settles, through the router and through the JSON gateway."""
    with grpc.insecure_channel(topo.address("registry-13")) as c13, \
            grpc.insecure_channel(topo.address("router")) as crt:
        hebei, router = rpb_grpc.RegistryServiceStub(c13), pb_grpc.RouterServiceStub(crt)
        patient = enroll(hebei, name="王芳")
        credit(hebei, patient, 10_000)
        grpc_mid, json_mid = msgid(), msgid()
        topo.services["registry-11"].stop()
        try:
            _, first = timed(router.Settle, settle_2207(patient, 1_000, grpc_mid, "110000"))
            assert unavailable(first), first
            assert gateway_reason(gateway_2207(topo, json_mid, patient, "20.00", "110000")) == \
                "REGISTRY_UNAVAILABLE"
            last = time.monotonic()
        finally:
            topo.restart("registry-11")
        wait_past_stale(last)
        _, resent = timed(router.Settle, settle_2207(patient, 1_000, grpc_mid, "110000"))
        assert isinstance(resent, grpc.RpcError) and reason(resent) == "INSURED_PLACE_MISMATCH", resent
        assert gateway_reason(gateway_2207(topo, json_mid, patient, "20.00", "110000")) == "INSURED_PLACE_MISMATCH"
        # The corrected messages, same msgids: each settles once.
        s = router.Settle(settle_2207(patient, 1_000, grpc_mid, ""), timeout=CLIENT_DEADLINE_S).setlinfo
        assert (s.setl_id, s.acct_pay_fen, s.insuplc_admdvs) == (grpc_mid, 1_000, "130100")
        assert router.Settle(settle_2207(patient, 1_000, grpc_mid, ""), timeout=CLIENT_DEADLINE_S).setlinfo == s
        answer = gateway_2207(topo, json_mid, patient, "20.00", "130100")
        assert answer["infcode"] == 0, answer["err_msg"]
        assert balance(hebei, patient) == 10_000 - 1_000 - 2_000


def test_a_2207_that_landed_while_its_answer_was_lost_stays_bound(topo: Topology):
    """The registry settled a 2207 and died before answering (the router says REGISTRY_UNAVAILABLE).
    Resent unchanged later, it gets the settled answer; resent with other fields, before or after
    that, it is refused IDEMPOTENCY_KEY_REUSED and settles nothing more."""
    with grpc.insecure_channel(topo.address("registry-13")) as c13, \
            grpc.insecure_channel(topo.address("router")) as crt:
        hebei, router = rpb_grpc.RegistryServiceStub(c13), pb_grpc.RouterServiceStub(crt)
        patient = enroll(hebei, name="赵磊")
        credit(hebei, patient, 10_000)
        mid = msgid()
        topo.restart("registry-13", env={"MEDAID_FAULT": "settle.after_finish"})
        try:
            _, first = timed(router.Settle, settle_2207(patient, 1_000, mid, ""))
            answered = time.monotonic()
            assert unavailable(first), first
        finally:
            topo.restart("registry-13")
        changed = settle_2207(patient, 1_500, mid, "")
        _, other = timed(router.Settle, changed)
        assert isinstance(other, grpc.RpcError) and reason(other) == "IDEMPOTENCY_KEY_REUSED", other
        wait_past_stale(answered)
        _, other = timed(router.Settle, changed)
        assert isinstance(other, grpc.RpcError) and reason(other) == "IDEMPOTENCY_KEY_REUSED", other
        s = router.Settle(settle_2207(patient, 1_000, mid, ""), timeout=CLIENT_DEADLINE_S).setlinfo
        assert (s.setl_id, s.acct_pay_fen) == (mid, 1_000)
        _, other = timed(router.Settle, changed)
        assert isinstance(other, grpc.RpcError) and reason(other) == "IDEMPOTENCY_KEY_REUSED", other
        assert balance(hebei, patient) == 10_000 - 1_000
