"""Helper modes of SPEC §4, end to end over gRPC (and through the router and the JSON gateway).

A member with several helpers: 北京 (11) uses them in filing (备案) order, each paying what it can
(`helpers_in_turn`); 河北 (13) lets only the helper with the largest balance pay, all or nothing; a
河北 variant with FILING_ORDER and no turns lets only the first-filed helper pay, all or nothing.
The result names every helper charged with its amount (`helper_charges`; `mulaid_pay_fen` and the
gateway's `acct_mulaid_pay` are their sum, `helper_id_number` the first); each helper and the member
keep a consumption record per charge; PreSettle gives the same split before; Diagnose agrees with
who can pay; a reversal returns each helper's share (`helper_refunds`) to the fen.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import urllib.request
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from conftest import policy_for
from medaid.common.clock import SHANGHAI
from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway.service import Gateway
from medaid.gateway.web import CALL_PATH, make_app
from medaid.registry.v1 import registry_pb2 as pb
from support import EMPLOYEE, RESIDENT, balance, bind, credit, enroll, rid

HEBEI, BEIJING = policy_for("13"), policy_for("11")
MODES = {
    "11": BEIJING,  # FILING_ORDER, in turn
    "13": HEBEI,  # LARGEST_BALANCE, all or nothing
    "13-filing": dataclasses.replace(HEBEI, helper_selection="FILING_ORDER"),  # the first filing, all or nothing
}
PLACE = {"11": ("110000", "110101"), "13": ("130100", "130102")}  # region, id-number division
INSTITUTION = {"11": "H11010500001", "13": "H13010100001"}
OWN = 1_000
HELPERS = {"A": 3_000, "B": 5_000, "C": 4_000}  # filed A, B, C; the richest is B

# (mode, bill) -> (helper charges in the order they paid, cash, helper_reason); the own account pays 1,000 first.
EXPECTED = {
    ("11", 4_000): ((("A", 3_000),), 0, ""),  # the first filing covers the rest exactly
    ("11", 10_000): ((("A", 3_000), ("B", 5_000), ("C", 1_000)), 0, ""),  # C pays part
    ("11", 14_000): ((("A", 3_000), ("B", 5_000), ("C", 4_000)), 1_000, "HELPER_INSUFFICIENT"),
    ("13", 4_000): ((("B", 3_000),), 0, ""),
    ("13", 10_000): ((), 9_000, "HELPER_INSUFFICIENT"),  # never pooled from several helpers
    ("13-filing", 4_000): ((("A", 3_000),), 0, ""),
    ("13-filing", 6_000): ((), 5_000, "HELPER_INSUFFICIENT"),  # B could, but A was filed first
}


@pytest.fixture
def mode_registry(request: Any, start_registry: Any) -> Any:
    policy = MODES[request.param]
    return start_registry(policy.province, policy=policy)


@dataclasses.dataclass
class Family:
    member: str
    helpers: dict[str, str]  # name -> id number, in filing order

    def name_of(self, pid: str) -> str:
        return {v: k for k, v in self.helpers.items()}.get(pid, "MEMBER" if pid == self.member else pid)


def family(stub: Any, province: str, helpers: dict[str, int], *, own: int = OWN,
           itype: int = EMPLOYEE) -> Family:
    region, division = PLACE[province]
    member = enroll(stub, itype=itype, region=region, division=division, birth="19550101")
    if own:
        credit(stub, member, own)
    ids = {}
    for name, bal in helpers.items():  # bound one after the other: the filing order
        ids[name] = enroll(stub, region=region, division=division, birth="19800101")
        if bal:
            credit(stub, ids[name], bal)
        bind(stub, ids[name], member)
    return Family(member, ids)


def settle_req(fam: Family, province: str, amount: int) -> pb.SettleRequest:
    return pb.SettleRequest(request_id=rid("settle"), patient_id_number=fam.member, amount_fen=amount,
                            use_account=True, category=cpb.CATEGORY_OUTPATIENT,
                            institution_code=INSTITUTION[province], institution_admdvs=PLACE[province][0])


def presettle_of(req: pb.SettleRequest) -> pb.PreSettleRequest:
    return pb.PreSettleRequest(patient_id_number=req.patient_id_number, amount_fen=req.amount_fen,
                               use_account=req.use_account, category=req.category,
                               institution_code=req.institution_code, institution_admdvs=req.institution_admdvs)


def charges(fam: Family, items: Any) -> tuple[tuple[str, int, int], ...]:
    return tuple((fam.name_of(c.helper_id_number), c.amount_fen, c.balance_after_fen) for c in items)


def records(stub: Any, fam: Family, pid: str) -> list[tuple[str, str, str, str, int, str]]:
    recs = stub.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=pid)).records
    return [(r.settlement_id, r.role, fam.name_of(r.helper_id_number), fam.name_of(r.member_id_number),
             r.mulaid_pay_fen, r.state) for r in recs]


def diagnose(stub: Any, fam: Family, name: str) -> tuple[bool, list[str], int]:
    d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=fam.member, helper_id_number=fam.helpers[name]))
    return d.would_pay, [f.code for f in d.findings], d.helper_balance_fen


def verdicts(mode: str, balances: dict[str, int]) -> dict[str, tuple[bool, list[str], int]]:
    """What Diagnose says of each ACTIVE helper (named in filing order) with these balances: where
    helpers pay in turn, each with money; else only the first in `helper_selection` order, and every
    other one is passed over (OTHER_HELPER_FIRST)."""
    policy = MODES[mode]
    names = list(balances)
    first = names[0] if policy.helper_selection == "FILING_ORDER" else \
        min(names, key=lambda n: (-balances[n], names.index(n)))
    out = {}
    for name, bal in balances.items():
        codes = [] if bal else ["HELPER_ZERO_BALANCE"]
        if not policy.helpers_in_turn and name != first:
            codes.append("OTHER_HELPER_FIRST")
        out[name] = (not codes, codes, bal)
    return out


@pytest.mark.parametrize(("mode_registry", "amount"), [(m, a) for m, a in EXPECTED], indirect=["mode_registry"],
                         ids=[f"{m}-{a}" for m, a in EXPECTED])
def test_every_helper_charged_is_named_recorded_and_refunded(mode_registry, amount, request):
    mode = request.node.callspec.params["mode_registry"]
    stub, province = mode_registry.stub, MODES[mode].province
    fam = family(stub, province, HELPERS)
    paid, cash, why = EXPECTED[(mode, amount)]
    after = {name: HELPERS[name] - fen for name, fen in paid}
    want_charges = tuple((name, fen, after[name]) for name, fen in paid)
    mulaid = sum(fen for _, fen in paid)

    # Diagnose: every helper is bound, ACTIVE and holds money; each one Settle could charge today
    # would pay (in turn: all of them; else the first in the province's order only).
    assert {name: diagnose(stub, fam, name) for name in HELPERS} == verdicts(mode, HELPERS)

    req = settle_req(fam, province, amount)
    pre = stub.PreSettle(presettle_of(req)).result
    assert charges(fam, pre.helper_charges) == want_charges
    assert all(balance(stub, pid) == HELPERS[name] for name, pid in fam.helpers.items())  # nothing moved

    res = stub.Settle(req).result
    assert charges(fam, res.helper_charges) == want_charges
    assert (res.acct_pay_fen, res.wallet_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen) == (OWN, 0, mulaid, cash)
    assert res.helper_reason == why
    assert res.wallet_reason == ("WALLET_NOT_OPENED" if amount > OWN else "")
    assert fam.name_of(res.helper_id_number) == (paid[0][0] if paid else "")
    assert res.helper_balance_after_fen == (after[paid[0][0]] if paid else 0)
    assert res.balance_after_fen == 0
    # PreSettle gave the same answer, but for the id and the state.
    pre.settlement_id, pre.state = res.settlement_id, res.state
    assert pre == res
    assert stub.GetSettlement(pb.GetSettlementRequest(settlement_id=req.request_id)).result == res
    assert stub.Settle(req).result == res  # a resend replays the first answer

    for name, pid in fam.helpers.items():
        assert balance(stub, pid) == after.get(name, HELPERS[name])
        want = [(req.request_id, "HELPER", name, "MEMBER", dict(paid)[name], "SETTLED")] if name in after else []
        assert records(stub, fam, pid) == want
    # The member keeps one record per helper charged (newest first).
    assert records(stub, fam, fam.member) == \
        [(req.request_id, "MEMBER", name, "MEMBER", fen, "SETTLED") for name, fen in reversed(paid)]
    # Diagnose still agrees with the balances: a helper emptied by the bill would not pay any more,
    # and where one helper pays, the first in order may now be another one.
    now = {name: after.get(name, HELPERS[name]) for name in HELPERS}
    assert {name: diagnose(stub, fam, name) for name in HELPERS} == verdicts(mode, now)

    rev = stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=req.request_id))
    assert (rev.acct_refund_fen, rev.mulaid_refund_fen, rev.balance_after_fen) == (OWN, mulaid, OWN)
    assert charges(fam, rev.helper_refunds) == tuple((name, fen, HELPERS[name]) for name, fen in paid)
    assert fam.name_of(rev.helper_id_number) == (paid[0][0] if paid else "")
    assert balance(stub, fam.member) == OWN
    assert {name: balance(stub, pid) for name, pid in fam.helpers.items()} == HELPERS
    for name, pid in fam.helpers.items():
        assert [r[-1] for r in records(stub, fam, pid)] == (["REVERSED"] if name in after else [])
    assert [r[-1] for r in records(stub, fam, fam.member)] == ["REVERSED"] * len(paid)
    got = stub.GetSettlement(pb.GetSettlementRequest(settlement_id=req.request_id)).result
    assert got.state == "REVERSED" and charges(fam, got.helper_charges) == want_charges


@pytest.mark.parametrize("mode_registry", ["11"], indirect=True)
def test_in_turn_passes_over_helpers_diagnose_says_cannot_pay(mode_registry):
    """北京: the empty first filing and the suspended second are passed over; the third pays all it has,
    the fourth the rest. Diagnose names why the first two cannot pay and says the other two can."""
    stub = mode_registry.stub
    fam = family(stub, "11", {"A": 0, "B": 50_000, "C": 4_000, "D": 6_000}, own=0, itype=RESIDENT)
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=fam.helpers["B"], status=cpb.PERSON_STATUS_SUSPENDED))
    verdicts = {name: diagnose(stub, fam, name)[:2] for name in fam.helpers}
    assert verdicts == {"A": (False, ["HELPER_ZERO_BALANCE"]), "B": (False, ["HELPER_NOT_ACTIVE"]),
                        "C": (True, []), "D": (True, [])}
    req = settle_req(fam, "11", 8_000)
    pre = stub.PreSettle(presettle_of(req)).result
    res = stub.Settle(req).result
    assert charges(fam, res.helper_charges) == charges(fam, pre.helper_charges) == \
        (("C", 4_000, 0), ("D", 4_000, 2_000))
    assert {fam.name_of(c.helper_id_number) for c in res.helper_charges} == \
        {name for name, (would, _) in verdicts.items() if would}
    assert (res.mulaid_pay_fen, res.cash_pay_fen, res.helper_reason) == (8_000, 0, "")
    assert records(stub, fam, fam.helpers["A"]) == records(stub, fam, fam.helpers["B"]) == []

    # Every helper empty (C and D emptied by this bill, A empty): zero balance, as Diagnose says.
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=fam.helpers["B"], status=cpb.PERSON_STATUS_TERMINATED))
    stub.Settle(settle_req(fam, "11", 2_000))  # D's last 2,000
    assert [diagnose(stub, fam, name)[:2] for name in ("A", "C", "D")] == [(False, ["HELPER_ZERO_BALANCE"])] * 3
    last = stub.Settle(settle_req(fam, "11", 500)).result
    assert (last.mulaid_pay_fen, last.cash_pay_fen, last.helper_reason) == (0, 500, "HELPER_ZERO_BALANCE")
    assert list(last.helper_charges) == []


@pytest.mark.parametrize("mode_registry", ["11"], indirect=True)
def test_a_batch_answers_in_turn_charges_as_settles_one_after_another(mode_registry):
    """One batch: the helper settles a bill of their own, then the member two bills. The helper's own
    bill leaves them less than the member's first bill was planned with, so that item is planned again;
    it must still be applied before the member's second bill (each item is exactly a Settle, in order)."""
    stub = mode_registry.stub
    fam = family(stub, "11", {"A": 1_000}, own=0, itype=RESIDENT)
    helper = fam.helpers["A"]
    reqs = [
        pb.SettleRequest(request_id=rid("settle"), patient_id_number=helper, amount_fen=800, use_account=True,
                         category=cpb.CATEGORY_OUTPATIENT, institution_code=INSTITUTION["11"],
                         institution_admdvs="110000"),
        settle_req(fam, "11", 500),
        settle_req(fam, "11", 100),
    ]
    out = [o.response.result for o in stub.SettleBatch(pb.SettleBatchRequest(requests=reqs)).outcomes]
    assert [(r.acct_pay_fen, charges(fam, r.helper_charges), r.cash_pay_fen, r.helper_reason) for r in out] == [
        (800, (), 0, ""),
        (0, (("A", 200, 0),), 300, "HELPER_INSUFFICIENT"),
        (0, (), 100, "HELPER_ZERO_BALANCE"),
    ]
    assert balance(stub, helper) == 0


# --- through the router and the national JSON gateway ---------------------------------------------

_msg = itertools.count(1)
START = dt.datetime(2026, 11, 22, 10, 0, tzinfo=SHANGHAI)


def envelope(infno: str, fixmedins: str, area: str, data: dict[str, Any]) -> dict[str, Any]:
    n = next(_msg)
    msgid = fixmedins + (START + dt.timedelta(seconds=n)).strftime("%Y%m%d%H%M%S") + f"{n % 10000:04d}"
    return {"infno": infno, "msgid": msgid, "mdtrtarea_admvs": area, "insuplc_admdvs": "",
            "fixmedins_code": fixmedins, "opter": "0001", "inf_time": "2026-11-22 10:00:00", "input": {"data": data}}


def data_2207(psn_no: str, yuan: str) -> dict[str, Any]:
    return {"psn_no": psn_no, "mdtrt_cert_type": "02", "mdtrt_cert_no": psn_no, "med_type": "11",
            "medfee_sumamt": yuan, "mdtrt_id": f"MZ{next(_msg):010d}", "insutype": "310", "acct_used_flag": "1"}


@pytest.fixture
def gateway_url(national: Any, start_router: Any, redis_server: Any, loop_thread: Any) -> Any:
    """The JSON gateway (aiohttp, in process, port 0) in front of a router in front of `national`."""
    router = start_router()

    async def boot() -> tuple[Gateway, web.AppRunner, aioredis.Redis, int]:
        client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
        gw = Gateway(router.address, client, clock=national.clock)
        runner = web.AppRunner(make_app(gw), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return gw, runner, client, runner.addresses[0][1]

    gw, runner, client, port = loop_thread.run(boot())
    try:
        yield f"http://127.0.0.1:{port}{CALL_PATH}"
    finally:
        async def stop() -> None:
            await runner.cleanup()
            await gw.close()
            await client.aclose()

        loop_thread.run(stop())


def post(url: str, message: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(message).encode(), method="POST",
                                 headers={"Content-Type": "application/json;charset=utf-8"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read(), parse_float=Decimal)
    assert answer["infcode"] == 0, answer["err_msg"]
    return dict(answer["output"]["setlinfo"])


@pytest.mark.parametrize(("province", "first", "mulaid"), [("11", "A", "90.00"), ("13", "", "0.00")])
def test_gateway_2207_acct_mulaid_pay_is_the_sum_of_the_helpers(national, gateway_url, province, first, mulaid):
    """A Beijing patient's three helpers pay in turn (3,000 + 5,000 + 1,000); a Hebei patient's richest
    helper cannot cover 9,000 alone, so none pays. 2206, 2207 and 2208 through the gateway and router."""
    stub = national.reg(province)
    fam = family(stub, province, HELPERS)
    inst, area = INSTITUTION[province], PLACE[province][0]
    pre = post(gateway_url, envelope("2206", inst, area, data_2207(fam.member, "100.00")))
    msg = envelope("2207", inst, area, data_2207(fam.member, "100.00"))
    s = post(gateway_url, msg)
    for out in (pre, s):
        assert (out["acct_pay"], out["wallet_pay"], out["acct_mulaid_pay"]) == \
            (Decimal("10.00"), Decimal("0.00"), Decimal(mulaid))
        assert out["acct_pay"] + out["acct_mulaid_pay"] + out["psn_cash_pay"] == Decimal("100.00")
        assert fam.name_of(out["medaid_ext"]["mulaid_psn_no"]) == first
    res = stub.GetSettlement(pb.GetSettlementRequest(settlement_id=s["setl_id"])).result
    assert sum(c.amount_fen for c in res.helper_charges) == res.mulaid_pay_fen == int(Decimal(mulaid) * 100)
    assert [fam.name_of(c.helper_id_number) for c in res.helper_charges] == (["A", "B", "C"] if first else [])
    assert {name: balance(stub, pid) for name, pid in fam.helpers.items()} == \
        ({"A": 0, "B": 0, "C": 3_000} if first else HELPERS)

    rev = post(gateway_url, envelope("2208", inst, area, {"setl_id": s["setl_id"], "psn_no": fam.member,
                                                           "mdtrt_id": msg["input"]["data"]["mdtrt_id"]}))
    assert (rev["acct_pay"], rev["acct_mulaid_pay"]) == (Decimal("-10.00"), -Decimal(mulaid))
    assert {name: balance(stub, pid) for name, pid in fam.helpers.items()} == HELPERS
    assert balance(stub, fam.member) == OWN
