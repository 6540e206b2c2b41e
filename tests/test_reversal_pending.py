"""A 2208 that has begun but not finished (the 医保钱包's share not yet refunded: the wallet is down)
as a hospital and a reconciliation clerk see it, over real HTTP and gRPC in front of a real
topology: 5203 by the settlement's setl_id and by the refund's, 2601, 3201 and 3202 all say it is
still being processed (IN_PROGRESS, 请稍后重新对账) and none of them shows the refund as done with
balances nobody was told; once the registry's recovery loop has finished it, every one of them
says REVERSED, with the balances the 2208 answered.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import grpc
import pytest
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from support import balance
from test_gateway import (
    HOSPITAL,
    Env,
    _statement_3201,
    data_2207,
    envelope,
    gateway_env,
    money_keys,
    new_msgid,
    wallet_family,
)

INSTITUTION = pb.Institution(fixmedins_code=HOSPITAL, mdtrtarea_admvs="130100")
# registry-13 as these tests run it: its recovery loop takes a half-done reversal 3 s after it began
# (--recovery-grace-ms; 15 s by default), a lock left by a crash expires after 3 s (--lock-ttl-ms;
# 10 s by default). Neither lets recovery finish the reversal while the wallet is down.
REGISTRY = {"MEDAID_RECOVERY_GRACE_MS": "3000", "MEDAID_LOCK_TTL_MS": "3000"}


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with gateway_env(provinces=("13", "11"), clean=("gateway", "router")) as e:
        e.topo.restart("registry-13", REGISTRY)
        yield e


def query(env: Env, psn_no: str, setl_id: str) -> dict[str, Any]:
    return env.post(envelope("5203", {"psn_no": psn_no, "setl_id": setl_id, "mdtrt_id": ""})).ok()


def query_grpc(env: Env, psn_no: str, setl_id: str) -> pb.QuerySettlementResponse:
    with grpc.insecure_channel(env.topo.address("router")) as ch:
        return pb_grpc.RouterServiceStub(ch).QuerySettlement(pb.QuerySettlementRequest(
            msgid=new_msgid(), institution=INSTITUTION, psn_no=psn_no, setl_id=setl_id), timeout=10)


def statement(medfee: str, acct: str, count: int, flag: str = "1") -> dict[str, Any]:
    return {**_statement_3201("2026-11-22", "2026-11-22"), "medfee_sumamt": medfee, "acct_pay": acct,
            "fixmedins_setl_cnt": count, "refd_setl_flag": flag}


def row(setl_id: str, medfee: str, acct: str, flag: str) -> dict[str, Any]:
    return {"setl_id": setl_id, "medfee_sumamt": medfee, "fund_pay_sumamt": "0.00", "acct_pay": acct,
            "refd_setl_flag": flag}


def wait_reversed(env: Env, psn_no: str, refund_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        q = query(env, psn_no, refund_id)
        if q["medaid_ext"]["setl_stas"] == "REVERSED":
            return q
        assert time.monotonic() < deadline, q
        time.sleep(0.3)


def _unmarked(keys: dict[bytes, Any]) -> dict[bytes, Any]:
    """`keys` less each settlement's mark of the 2601 that cancelled it (`cancelled_by`)."""
    return {k: (t, tuple(f for f in v if f[0] != b"cancelled_by")) if t == b"hash" else (t, v)
            for k, (t, v) in keys.items()}


def money(env: Env) -> dict[bytes, Any]:
    """The registries' and the wallet's keys, less the patients' lock and fence counters: the recovery
    loop takes the lock of a reversal it cannot finish yet (the wallet down) every second."""
    return {k: v for k, v in money_keys(env.r).items() if not k.endswith((b":lock", b":fence"))}


def test_a_2208_whose_wallet_refund_is_pending_is_in_progress_everywhere_until_it_finishes(env: Env):
    patient, helper, _ = wallet_family(env)
    bill = data_2207(patient, "120.00")
    setl = env.post(envelope("2207", bill)).ok()["setlinfo"]
    assert (setl["acct_pay"], setl["wallet_pay"], setl["acct_mulaid_pay"]) == \
        (Decimal("20.00"), Decimal("30.00"), Decimal("70.00"))
    sid = setl["setl_id"]
    rev = envelope("2208", {"setl_id": sid, "mdtrt_id": bill["mdtrt_id"], "psn_no": patient})
    env.topo.services["wallet"].stop()
    try:
        begun = env.post(rev)
        assert begun.infcode == -1 and begun.output["medaid_ext"]["retryable"], begun.text
        # Nothing read below writes anything.
        before = money(env)

        # 5203 by the settlement's setl_id: being reversed, not reversed yet; the 2208 doing it named.
        q = query(env, patient, sid)
        assert q["medaid_ext"]["setl_stas"] == "IN_PROGRESS", q["medaid_ext"]
        assert q["medaid_ext"]["reversal_id"] == rev["msgid"]
        assert q["setlinfo"]["balc"] == Decimal("0.00")  # the 2207's own balance after, which is known
        # 5203 by the refund's setl_id: the refund record, still being processed: no balances after it
        # that the 2208 never answered, null rather than a 0.00 a HIS would book as the balance.
        q = query(env, patient, rev["msgid"])
        ext, s = q["medaid_ext"], q["setlinfo"]
        assert ext["setl_stas"] == "IN_PROGRESS", ext
        assert ext["init_setl_id"] == sid and s["setl_id"] == rev["msgid"] and s["refd_setl_flag"] == "1"
        assert (s["acct_pay"], s["wallet_pay"], s["acct_mulaid_pay"]) == \
            (Decimal("-20.00"), Decimal("-30.00"), Decimal("-70.00"))
        assert s["balc"] is None and s["setl_time"] == ext["reversed_time"] != ""
        assert [(h["psn_no"], h["amount"], h["balc"]) for h in s["medaid_ext"]["mulaid_helpers"]] == \
            [(helper, Decimal("-70.00"), None)]
        g = query_grpc(env, patient, rev["msgid"])
        assert g.settlement.state == "IN_PROGRESS" and g.settlement.init_setl_id == sid
        assert not g.settlement.setlinfo.HasField("balc_fen")
        assert [h.HasField("balc_fen") for h in g.settlement.setlinfo.mulaid_helpers] == [False]
        assert query_grpc(env, patient, sid).settlement.state == "IN_PROGRESS"
        # 2601 of that 2208: it has not finished either.
        env.post(envelope("2601", {"psn_no": patient, "omsgid": rev["msgid"], "oinfno": "2208"})).refused(
            "ORIGINAL_IN_PROGRESS")

        # 3201, refunds counted or not: one settlement still being processed, reconcile again later.
        for st in (statement("0.00", "0.00", 2), statement("120.00", "20.00", 1), statement("0.00", "0.00", 0, "0")):
            out = env.post(envelope("3201", st)).ok()
            assert out["stmtinfo"]["stmt_rslt"] == "1", out
            assert "请稍后重新对账" in out["stmtinfo"]["stmt_rslt_dscr"], out
            assert out["medaid_ext"]["platform"]["in_progress_cnt"] == 1, out
        # 3202: the settlement's row and the refund's row are being processed, not reversed / missing.
        rows = [row(sid, "120.00", "20.00", "0"), row(rev["msgid"], "-120.00", "-20.00", "1")]
        out = env.post(envelope("3202", input_={"data": statement("0.00", "0.00", 2), "detail": rows})).ok()
        assert out["medaid_ext"]["in_progress_cnt"] == 1, out
        assert "请稍后重新对账" in out["stmtinfo"]["stmt_rslt_dscr"], out
        kinds = {d["setl_id"]: (d["stmt_rslt_type"], d["setl_stas"]) for d in out["detail"]}
        assert kinds == {sid: ("IN_PROGRESS", "IN_PROGRESS"), rev["msgid"]: ("IN_PROGRESS", "IN_PROGRESS")}, kinds
        assert money(env) == before
    finally:
        env.topo.restart("wallet")

    # The recovery loop finishes the reversal: every answer agrees again, with the balances after it.
    q = wait_reversed(env, patient, rev["msgid"])
    s = q["setlinfo"]
    assert s["balc"] == Decimal("20.00") and s["setl_time"] == q["medaid_ext"]["reversed_time"] != ""
    assert [(h["psn_no"], h["amount"], h["balc"]) for h in s["medaid_ext"]["mulaid_helpers"]] == \
        [(helper, Decimal("-70.00"), Decimal("100.00"))]
    assert balance(env.hebei, patient) == 2_000 and balance(env.hebei, helper) == 10_000
    answered = env.post(rev).ok()["setlinfo"]
    assert (answered["balc"], answered["setl_time"]) == (s["balc"], s["setl_time"])
    assert query(env, patient, sid)["medaid_ext"]["setl_stas"] == "REVERSED"
    assert query_grpc(env, patient, rev["msgid"]).settlement.state == "REVERSED"
    out = env.post(envelope("3201", statement("0.00", "0.00", 2))).ok()
    assert out["stmtinfo"] == {"setl_optins": "130100", "stmt_rslt": "0", "stmt_rslt_dscr": "对账平"}, out
    assert out["medaid_ext"]["platform"]["in_progress_cnt"] == 0
    rows = [row(sid, "120.00", "20.00", "0"), row(rev["msgid"], "-120.00", "-20.00", "1")]
    out = env.post(envelope("3202", input_={"data": statement("0.00", "0.00", 2), "detail": rows})).ok()
    assert out["stmtinfo"]["stmt_rslt"] == "0" and out["detail"] == [], out


def test_a_2601_of_a_2207_whose_2208_is_still_refunding_says_already_reversed_and_moves_nothing(env: Env):
    patient, _, _ = wallet_family(env)
    bill = data_2207(patient, "120.00")
    sid = env.post(envelope("2207", bill)).ok()["setlinfo"]["setl_id"]
    rev = envelope("2208", {"setl_id": sid, "mdtrt_id": bill["mdtrt_id"], "psn_no": patient})
    env.topo.services["wallet"].stop()
    try:
        assert env.post(rev).infcode == -1
        before = money(env)
        undo = envelope("2601", {"psn_no": patient, "omsgid": sid, "oinfno": "2207"})
        out = env.post(undo).ok()
        assert out["medaid_ext"]["outcome"] == "ALREADY_REVERSED", out
        # Nothing moved; the settlement is only marked cancelled by this 2601 (no 2601 of the 2208 undoes
        # the reversal since), which is all it wrote.
        after = money(env)
        marks = [dict(v[1]).get(b"cancelled_by") for k, v in after.items() if b":setl:" in k and v[0] == b"hash"]
        assert [m for m in marks if m] == [undo["msgid"].encode()], marks
        assert _unmarked(after) == _unmarked(before)
    finally:
        env.topo.restart("wallet")
    assert wait_reversed(env, patient, rev["msgid"])["setlinfo"]["balc"] == Decimal("20.00")
