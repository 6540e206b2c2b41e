"""Separate processes: the registry binary, its health/reflection services, masked logs, SIGTERM."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from support import RESIDENT, bind, credit, dead_port, enroll, settle, unmasked_id_numbers


def test_registry_processes_serve_health_reflection_mask_logs_and_stop_on_sigterm():
    topo = Topology.start(provinces=("13", "62"))
    try:
        svc = topo.services["registry-13"]
        assert svc.healthy()
        with grpc.insecure_channel(svc.address) as ch:
            stub = pb_grpc.RegistryServiceStub(ch)
            helper = enroll(stub, name="张三丰")
            member = enroll(stub, itype=RESIDENT, birth="20150101", name="张无忌")
            credit(stub, helper, 10_000)
            bind(stub, helper, member)
            res = settle(stub, member, 2_500)
            assert res.mulaid_pay_fen == 2_500
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            answers = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
            names = {s.name for s in answers[0].list_services_response.service}
            assert "medaid.registry.v1.RegistryService" in names
            assert "grpc.health.v1.Health" in names
            # A province registry serves its own province only.
            with grpc.insecure_channel(topo.address("registry-62")) as ch62:
                other = pb_grpc.RegistryServiceStub(ch62)
                try:
                    other.GetPerson(pb.GetPersonRequest(id_number=helper))
                    raise AssertionError("registry-62 knows a 河北 person")
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
    finally:
        codes = topo.stop()
    assert codes == {"registry-13": 0, "registry-62": 0, "wallet": 0, "router": 0, "gateway": 0}
    logs = "\n".join(svc.log_lines)
    assert "settled" in logs and "enrolled" in logs
    assert helper[:6] + "********" + helper[14:] in logs
    assert not unmasked_id_numbers(logs), "an unmasked id number reached the logs"
    assert "张三丰" not in logs and "张**" in logs


def test_make_run_story_exits_zero_and_narrates():
    proc = subprocess.run([sys.executable, "-m", "medaid.demo"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for expected in ("共济 ¥128.50", "PROXY_ONLY", "RELATION_NOT_ALLOWED", "HELPER_ZERO_BALANCE",
                     "MODEL_POOLED", "甘肃 family account", "家庭共济账户 pays ¥68.00", "代缴",
                     "reversed", "CROSS_PROVINCE → WALLET_TRANSFER",
                     "钱包 ¥380.00", "13 → 11: ¥380.00",
                     "Stopped: gateway exit 0, router exit 0, wallet exit 0, registry-35 exit 0, registry-62 exit 0",
                     # step 7: a hospital system's own JSON messages through the national gateway
                     "1101 → infcode 0", "acct_mulaid_pay 58.00 (共济人 张伟", "infcode -1: INVALID_AMOUNT"):
        assert expected in out, expected
    assert not unmasked_id_numbers(out)


def test_status_with_nothing_running_says_so_and_succeeds(tmp_path):
    """`make status` before `make up` must not end in a make error."""
    done = subprocess.run([sys.executable, "-m", "medaid.topology", "status"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("nothing running") and "make up" in done.stdout


def test_a_log_level_the_services_would_not_take_is_refused_before_anything_starts(tmp_path):
    done = subprocess.run([sys.executable, "-m", "medaid.topology", "up"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "MEDAID_LOG_LEVEL": "verbose"})
    assert done.returncode == 2
    assert "MEDAID_LOG_LEVEL='VERBOSE'" in done.stderr and "WARNING" in done.stderr
    assert not (tmp_path / "build").exists()


def _running_in(directory: Path) -> list[int]:
    """Processes whose working directory is `directory` (what `make up` started from there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(directory):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_make_up_that_fails_leaves_nothing_running(tmp_path: Path):
    """A service that cannot start fails `make up` at once, naming it, and what had started is
    stopped again: no state file would let `make down` find it."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "medaid.topology", "up"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "MEDAID_SIGN_ALG": "rot13"})
    assert done.returncode != 0
    assert "gateway exited" in done.stderr, done.stderr
    assert time.monotonic() - started < 60  # not the 30 s health wait for a process that is gone
    assert not (tmp_path / "build/run/topology.json").exists()
    assert _running_in(tmp_path) == []


def test_status_exits_non_zero_when_a_service_is_down(tmp_path: Path):
    """A script, compose or Kubernetes check reads the exit code: `make status` fails while any
    process `make up` started does not answer, and names it."""
    run = tmp_path / "build/run"
    run.mkdir(parents=True)
    (run / "topology.json").write_text(json.dumps({"addresses": {"registry-13": f"127.0.0.1:{dead_port()}",
                                                                 "gateway": f"127.0.0.1:{dead_port()}"}}))
    done = subprocess.run([sys.executable, "-m", "medaid.topology", "status"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done.stdout
    lines = done.stdout.splitlines()
    assert [ln.split()[0] for ln in lines if ln.split()[-1] == "DOWN"] == ["registry-13", "gateway"]


def test_ports_taken_between_choosing_and_binding_them_are_replaced(monkeypatch):
    """Topology.start chooses every port before it starts the processes (they name each other): another
    test process may bind one in between. Such a process (the wallet, which the registries started
    before it name; the HTTP gateway) moves to a fresh port, and no process is left naming the old one."""
    from medaid.topology import launch

    taken = {name: socket.create_server(("127.0.0.1", 0)) for name in ("wallet", "gateway")}
    chosen = iter(["registry-13", "wallet", "router", "gateway"])
    real = launch.free_port

    def free_port() -> int:
        name = next(chosen, None)
        return taken[name].getsockname()[1] if name in taken else real()

    monkeypatch.setattr(launch, "free_port", free_port)
    topo = None
    try:
        topo = Topology.start(provinces=("13",), clock=DEMO_CLOCK)
        old = {f"127.0.0.1:{s.getsockname()[1]}" for s in taken.values()}
        assert not old & {topo.address(n) for n in topo.ports}
        for name, svc in topo.services.items():
            assert svc.healthy(), name
            assert not [a for a in svc.proc.args if any(o in str(a) for o in old)], (name, svc.proc.args)
    finally:
        if topo is not None:
            assert set(topo.stop().values()) == {0}
        for s in taken.values():
            s.close()
