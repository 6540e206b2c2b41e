"""A settlement whose reversal, or the undoing of its reversal (2601 of a 2208), has begun but not
finished, as every read of one settlement gives it over real gRPC in front of a real topology: the
registry's GetSettlement (the operator CLI's `medaid settlement`, the router's 2208) says IN_PROGRESS
with GetSettlements (5203, 3201, 3202), not SETTLED; the 2208s that read it still answer as before
(one meeting an undo under way is told so: UNDO_IN_PROGRESS); once finished, every read says the
same final state."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from medaid import cli
from medaid.registry.v1 import registry_pb2 as rpb
from test_gateway import Env, data_2207, envelope, gateway_env, wallet_family

# registry-13 as this test runs it: its recovery loop takes a half-done reversal or undo 3 s after it
# began (--recovery-grace-ms; 15 s by default), a lock left by its crash expires after 3 s
# (--lock-ttl-ms; 10 s by default). Neither can finish while the wallet is down.
REGISTRY = {"MEDAID_RECOVERY_GRACE_MS": "3000", "MEDAID_LOCK_TTL_MS": "3000"}


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with gateway_env(provinces=("13", "11"), clean=("gateway", "router")) as e:
        e.topo.restart("registry-13", REGISTRY)
        yield e


def reads(env: Env, sid: str) -> tuple[rpb.SettlementResult, rpb.SettlementResult]:
    """GetSettlement's answer and GetSettlements' for the same id."""
    one = env.hebei.GetSettlement(rpb.GetSettlementRequest(settlement_id=sid), timeout=10).result
    many = env.hebei.GetSettlements(rpb.GetSettlementsRequest(settlement_ids=[sid]), timeout=10).settlements[0]
    assert many.found
    return one, many.result


def cli_line(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str], patient: str, sid: str) -> str:
    args = ["--topology", str(tmp_path / "none.json"), "--registry", f"13={env.topo.address('registry-13')}"]
    capsys.readouterr()
    assert cli.main([*args, "settlement", patient, sid]) == 0, capsys.readouterr().err
    return capsys.readouterr().out.splitlines()[0]


def wait_state(env: Env, sid: str, state: str) -> None:
    deadline = time.monotonic() + 30
    while reads(env, sid)[1].state != state:
        assert time.monotonic() < deadline, reads(env, sid)
        time.sleep(0.3)


def test_get_settlement_says_in_progress_while_a_reversal_or_its_undo_is_unfinished(
        env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patient, _, _ = wallet_family(env)
    bill = data_2207(patient, "120.00")
    sid = env.post(envelope("2207", bill)).ok()["setlinfo"]["setl_id"]
    rev = envelope("2208", {"setl_id": sid, "mdtrt_id": bill["mdtrt_id"], "psn_no": patient})
    other = envelope("2208", {"setl_id": sid, "mdtrt_id": bill["mdtrt_id"], "psn_no": patient})

    # A 2208 begun, its wallet share waiting for the wallet: REVERSING.
    env.topo.services["wallet"].stop()
    try:
        assert env.post(rev).refused("WALLET_UNAVAILABLE")
        one, many = reads(env, sid)
        assert one.state == many.state == "IN_PROGRESS", (one, many)
        assert one == many
        assert f"settlement {sid} IN_PROGRESS of " in cli_line(env, tmp_path, capsys, patient, sid)
        # The router's 2208 reads it first: a resend, or another 2208, is still told to retry.
        assert env.post(rev).refused("WALLET_UNAVAILABLE")
        assert env.post(other).refused("WALLET_UNAVAILABLE")
    finally:
        env.topo.restart("wallet")
    wait_state(env, sid, "REVERSED")
    one, many = reads(env, sid)
    assert one.state == many.state == "REVERSED" and one == many
    assert f"settlement {sid} REVERSED of " in cli_line(env, tmp_path, capsys, patient, sid)
    env.post(other).refused("ALREADY_REVERSED")

    # A 2601 of that 2208 cut by a crash once the own share is taken again, the wallet down: RESTORING.
    undo = envelope("2601", {"psn_no": patient, "omsgid": rev["msgid"], "oinfno": "2208"})
    env.topo.restart("registry-13", {"MEDAID_FAULT": "undo.after_begin", **REGISTRY})
    assert env.post(undo).refused("REGISTRY_UNAVAILABLE")
    env.topo.services["wallet"].stop()
    try:
        env.topo.restart("registry-13", REGISTRY)
        one, many = reads(env, sid)
        assert one.state == many.state == "IN_PROGRESS", (one, many)
        assert one == many
        assert f"settlement {sid} IN_PROGRESS of " in cli_line(env, tmp_path, capsys, patient, sid)
        again = envelope("2208", {"setl_id": sid, "mdtrt_id": bill["mdtrt_id"], "psn_no": patient})
        # A 2208 meanwhile is told that a 冲正 is undoing the reversal (to be sent again), not to resend a
        # settlement that finished long ago; PATIENT_BUSY while the recovery loop holds the patient.
        deadline = time.monotonic() + 20
        while (refused := env.post(again)).output["medaid_ext"]["reason"] == "PATIENT_BUSY":
            assert time.monotonic() < deadline, refused.text
            time.sleep(0.2)
        refused.refused("UNDO_IN_PROGRESS")
        assert refused.output["medaid_ext"]["retryable"], refused.text
    finally:
        env.topo.restart("wallet")
    wait_state(env, sid, "SETTLED")
    one, many = reads(env, sid)
    assert one.state == many.state == "SETTLED" and one == many
    assert f"settlement {sid} SETTLED of " in cli_line(env, tmp_path, capsys, patient, sid)
