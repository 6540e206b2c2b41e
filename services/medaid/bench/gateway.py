"""The hospital's path under load: a 2207 as HTTP JSON in the national envelope, through the gateway.
Shared by the harness's gateway phase and the Locust scenario (locustfile.py)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import aiohttp

CALL_PATH = "/fsi/api/rsfComIfsService/callService"  # medaid.gateway.web.CALL_PATH
MED_TYPE_OUTPATIENT = "11"  # 普通门诊


def yuan_text(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def envelope_2207(msgid: str, fixmedins_code: str, mdtrtarea_admvs: str, psn_no: str, insuplc_admdvs: str,
                  amount_fen: int) -> dict[str, Any]:
    """A complete 2207 message as a hospital system sends it (amounts as decimal-yuan strings)."""
    t = msgid[12:26]
    return {
        "infno": "2207", "msgid": msgid, "mdtrtarea_admvs": mdtrtarea_admvs, "insuplc_admdvs": insuplc_admdvs,
        "recer_sys_code": "MBS_LOCAL", "infver": "V1.0", "opter_type": "1", "opter": "0001", "opter_name": "收费员",
        "inf_time": f"{t[0:4]}-{t[4:6]}-{t[6:8]} {t[8:10]}:{t[10:12]}:{t[12:14]}", "fixmedins_code": fixmedins_code,
        "fixmedins_name": "压测医院", "sign_no": "",
        "input": {"data": {"psn_no": psn_no, "mdtrt_cert_type": "02", "mdtrt_cert_no": psn_no, "med_type":
                           MED_TYPE_OUTPATIENT, "medfee_sumamt": yuan_text(amount_fen), "psn_setlway": "01",
                           "mdtrt_id": msgid[-12:], "chrg_bchno": msgid[-8:], "insutype": "310",
                           "acct_used_flag": "1"}},
    }


def to_fen(value: Any) -> int:
    return int(Decimal(str(value)) * 100)


# infcode -1 answers that are a failure of the system, not a business rule saying no.
SYSTEM_FAILURES = frozenset({"INTERNAL_ERROR", "DOWNSTREAM_ERROR"})
# infcode -1 answers about the caller's credential or its rate, not the bill: a failure, as the gRPC
# path's UNAUTHENTICATED, PERMISSION_DENIED and RESOURCE_EXHAUSTED are (docs/security.md).
CALLER_FAILURES = {
    "CREDENTIAL_REQUIRED": "UNAUTHENTICATED", "INSTITUTION_UNAUTHENTICATED": "UNAUTHENTICATED",
    "INSTITUTION_TOKEN_INVALID": "UNAUTHENTICATED", "SIGNATURE_INVALID": "UNAUTHENTICATED",
    "SIGN_NO_INVALID": "UNAUTHENTICATED", "PEER_UNAUTHENTICATED": "UNAUTHENTICATED",
    "INSTITUTION_MISMATCH": "PERMISSION_DENIED", "CALLER_NOT_ALLOWED": "PERMISSION_DENIED",
    "RATE_LIMITED": "RESOURCE_EXHAUSTED",
}


def answer_status(answer: dict[str, Any]) -> tuple[str, str]:
    """(status, reason) of a gateway answer, any infno: OK for infcode 0; REFUSED with the reason code of
    err_msg when a business rule said no; by the reason, INTERNAL for a failure inside a service
    (SYSTEM_FAILURES), and UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED for the caller's
    credential or rate (CALLER_FAILURES), as the gRPC path reports them; UNAVAILABLE for any other
    answer marked retryable (something was not answering or was busy: the same msgid may succeed later).
    The reason decides first: `medaid_ext.retryable` is also true after a failure inside and a rate
    limit (resend with the same msgid), which are not "unavailable"."""
    if answer.get("infcode") == 0:
        return "OK", ""
    reason = str(answer.get("err_msg", "")).partition(":")[0] or "UNKNOWN"
    if reason in SYSTEM_FAILURES:
        return "INTERNAL", reason
    if reason in CALLER_FAILURES:
        return CALLER_FAILURES[reason], reason
    ext = (answer.get("output") or {}).get("medaid_ext") or {}
    return ("UNAVAILABLE" if ext.get("retryable") is True else "REFUSED"), reason


def unknown_outcome(status: str) -> bool:
    """Whether a 2207 posted with this status (answer_status, post) may or may not have settled: no
    answer, a failure inside a service, a retryable answer, an HTTP 5xx. A refusal, an answer about
    the caller's credential or rate, or another HTTP status settled nothing."""
    return status in ("UNAVAILABLE", "INTERNAL") or status.startswith("HTTP_5")


def read_answer(body: bytes) -> tuple[str, str, int]:
    """A 2207's (status, reason, fen that left accounts and wallets), the status as answer_status says.
    Amounts are read as decimals from the raw JSON, never as floats."""
    answer = json.loads(body, parse_float=Decimal)
    status, reason = answer_status(answer)
    if status != "OK":
        return status, reason, 0
    s = answer["output"]["setlinfo"]
    return "OK", "", to_fen(s["acct_pay"]) + to_fen(s.get("wallet_pay", 0)) + to_fen(s["acct_mulaid_pay"])


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[str, str, bytes]:
    """POST one message: (status, reason, the raw answer). No answer is UNAVAILABLE (as gRPC would say
    it), with the exception's name as the reason; an HTTP status but 200 is HTTP_<status>; otherwise
    the status of the answer (answer_status), which the caller reads from the raw body."""
    try:
        async with session.post(url, json=body, headers=headers or {}) as resp:
            raw = await resp.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        return "UNAVAILABLE", type(exc).__name__, b""
    if resp.status != 200:
        return f"HTTP_{resp.status}", "", raw
    return (*answer_status(json.loads(raw, parse_float=Decimal)), raw)
