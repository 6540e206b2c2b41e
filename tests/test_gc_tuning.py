"""The services' GC tuning (common/server.tune_gc), in fresh interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = ("import gc, json; from medaid.common.server import install_uvloop; before = gc.get_threshold(); "
         "install_uvloop(); print(json.dumps({'before': before, 'after': gc.get_threshold(), "
         "'frozen': gc.get_freeze_count()}))")


def _probe(env_value: str | None) -> dict[str, list[int] | int]:
    env = {k: v for k, v in os.environ.items() if k != "MEDAID_GC_THRESHOLD"}
    if env_value is not None:
        env["MEDAID_GC_THRESHOLD"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_default_raises_young_threshold_and_freezes_startup_objects() -> None:
    got = _probe(None)
    assert got["after"] == [50_000, 50, 100]
    assert got["before"] != got["after"]
    assert got["frozen"] > 1000  # modules, protobuf descriptors… no longer scanned


def test_threshold_from_environment_and_zero_keeps_python_default() -> None:
    assert _probe("20000")["after"] == [20_000, 50, 100]
    default = _probe("0")
    assert default["after"] == default["before"] and default["frozen"] == 0
