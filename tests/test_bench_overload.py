"""What a gRPC client of the router hears when the router is overloaded. gRPC's own server sheds
calls the service has not yet taken up (more than `grpc.server.max_pending_requests`, 1,000, waiting
to be handed to the event loop): it answers them a bare CANCELLED, without ErrorInfo, before any
handler ran. The bench meets them under `--rate` beyond capacity. A hospital must read such an
answer as "no answer: resend the same msgid", so docs/grpc-api.md says so for every code whose
outcome is unknown (errors.OUTCOME_UNKNOWN, the rule the gateway and the CLI apply). No servers."""

from __future__ import annotations

import re
from pathlib import Path

from medaid.common import errors

ROOT = Path(__file__).resolve().parents[1]


def section(text: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"docs/grpc-api.md has no section '## {title}'"
    return m.group(1)


def test_grpc_api_says_which_bare_codes_mean_resend_the_same_msgid():
    body = section((ROOT / "docs" / "grpc-api.md").read_text(encoding="utf-8"), "Answers without a reason")
    named = set(re.findall(r"`([A-Z_]+)`", body))
    unknown = {c.name for c in errors.OUTCOME_UNKNOWN}
    assert unknown <= named, f"not named as resend: {sorted(unknown - named)}"
    assert "same msgid" in body and "CANCELLED" in body and "max_pending_requests" in body
