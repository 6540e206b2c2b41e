"""Every reason code a service can answer with is named in the documentation (README.md or
docs/**/*.md), so an integrator who meets one in `google.rpc.ErrorInfo.reason` or a gateway
`err_msg` can look it up. The codes are read from the source as tests/test_gateway.py reads them for
the Chinese operator messages. No servers: reads files only."""

from __future__ import annotations

import re
from pathlib import Path

from test_gateway import reason_codes_in_source

ROOT = Path(__file__).resolve().parents[1]


def documentation() -> str:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return "\n".join(p.read_text(encoding="utf-8") for p in pages)


def undocumented(codes: dict[str, str], text: str) -> dict[str, str]:
    return {code: where for code, where in codes.items() if not re.search(rf"(?<![A-Z0-9_]){code}(?![A-Z0-9_])", text)}


def test_every_reason_code_is_documented():
    codes = reason_codes_in_source()
    assert len(codes) > 200, "the extraction found almost no reason codes"
    missing = undocumented(codes, documentation())
    assert not missing, "reason codes named in no page of docs/ nor README.md (code: where raised):\n" + \
        "\n".join(f"  {code}: {where}" for code, where in sorted(missing.items()))


def test_a_code_inside_a_longer_one_does_not_count():
    text = "`MEMBER_MOVED_REGION` and `UNKNOWN_REGION_X`"
    assert undocumented({"MOVED_REGION": "x", "UNKNOWN_REGION": "y"}, text) == {"MOVED_REGION": "x",
                                                                                  "UNKNOWN_REGION": "y"}
    assert undocumented({"MEMBER_MOVED_REGION": "x"}, text) == {}
