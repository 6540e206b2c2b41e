"""The JSON log line (common/logs.py): personal data masked, the call's ids named. Pure: no servers."""

from __future__ import annotations

import contextvars
import io
import json
import logging
from collections.abc import Iterator

import pytest
from medaid.common import logs, tracing
from medaid.registry.outcomes import log_settled
from medaid.registry.records import ChargeDone, SettlementRecord

PATIENT = "130102201506010029"
HELPER = "130102198001010010"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """The root logger's records as JSON lines in a buffer, at INFO, as `logs.setup` configures it."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter("registry-13"))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


def _read(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize(("text", "expected"), [
    (f"member {PATIENT} refused", "member 130102********0029 refused"),
    (f"{HELPER},{PATIENT}", "130102********0010,130102********0029"),
    ("11010519550301001X", "110105********001X"),
    ("guardian 11010519550301001x", "guardian 110105********001x"),  # as typed at a counter
    ("13010219800101001", "13010219800101001"),  # 17 characters: not an id number
    ("H13010100001202611221000000001", "H13010100001202611221000000001"),  # a msgid: digits run on
    ("2207", "2207"),
    # A 15-digit number of the first generation (GB 11643-1989: division, YYMMDD, sequence), as an
    # operator may type it in a reason or a hospital system may send it: masked the same way.
    ("持旧证130102800101123核对", "持旧证130102******123核对"),
    ("old card 110105550301001.", "old card 110105******001."),
    ("at most 100000000000000 fen", "at most 100000000000000 fen"),  # no birth date in it: an amount
    ("console-ab130102800101123cd", "console-ab130102800101123cd"),  # inside an id of letters and digits
])
def test_scrub_masks_id_numbers_in_free_text_and_nothing_else(text: str, expected: str) -> None:
    assert logs.scrub(text) == expected


def test_a_line_masks_personal_fields_and_names_the_current_call(lines: io.StringIO) -> None:
    log = logging.getLogger("medaid.registry")

    def in_a_call() -> tracing.Call:
        call = tracing.start(TRACEPARENT, "H13010100001202611221000000001")
        logs.event(log, f"bound {PATIENT}", id_number=HELPER, name="张三丰", note=f"for {PATIENT}", amount_fen=12850)
        log.debug("not written below INFO")
        log.warning("plain")
        return call

    call = contextvars.copy_context().run(in_a_call)
    first, second = _read(lines)
    assert first == {"ts": first["ts"], "level": "info", "service": "registry-13", "logger": "medaid.registry",
                     "msg": "bound 130102********0029", "trace_id": call.trace_id,
                     "request_id": "H13010100001202611221000000001", "id_number": "130102********0010",
                     "name": "张**", "note": "for 130102********0029", "amount_fen": 12850}
    assert second["level"] == "warning" and second["msg"] == "plain"
    assert PATIENT not in lines.getvalue() and HELPER not in lines.getvalue()


def _record() -> SettlementRecord:
    return SettlementRecord(
        sid="H13010100001202611221000000001", patient=PATIENT, amount=12850, acct_pay=0, wallet_pay=0,
        charges=(ChargeDone(HELPER, 12850, 37150),), cash_pay=0, helper_reason="", wallet_reason="WALLET_NOT_OPENED",
        category=1, institution="H13010100001", place="130100", region="130100", at=1_796_000_000_000,
        state="SETTLED", own_bal_after=-1, family_id="")


def test_a_batch_items_settled_line_names_the_items_trace_not_the_batch_calls(lines: io.StringIO) -> None:
    def in_a_batch_call() -> tracing.Call:
        call = tracing.start(None, "")
        log_settled(_record(), "atomic", TRACEPARENT)
        log_settled(_record(), "atomic", "not-a-traceparent")
        return call

    batch_call = contextvars.copy_context().run(in_a_batch_call)
    item, garbled = _read(lines)
    assert item["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert item["request_id"] == "H13010100001202611221000000001"
    assert item["patient"] == "130102********0029" and item["helpers"] == "130102********0010"
    assert (item["amount_fen"], item["mulaid_pay"], item["path"]) == (12850, 12850, "atomic")
    # A traceparent that does not parse leaves the batch call's trace, as the item's own calls would.
    assert garbled["trace_id"] == batch_call.trace_id and "request_id" not in garbled


def test_personal_data_inside_lists_and_nested_objects_is_masked_too(lines: io.StringIO) -> None:
    """A field whose value is a list or an object (a batch's ids, a per-person map) is masked all the
    way down, by the same rules as a top-level field: its keys, its texts, its names."""
    log = logging.getLogger("medaid.router")
    logs.event(log, "batch", msgids=[f"for {PATIENT}", "H13010100001202611221000000001"], helper=[HELPER, 12850],
               detail={"patient": PATIENT, "name": "张三丰", "by_sender": {HELPER: 4000},
                       "people": [{"id_number": HELPER, "name": "李明"}], "note": (f"old {PATIENT}",)})
    (line,) = _read(lines)
    assert line["msgids"] == ["for 130102********0029", "H13010100001202611221000000001"]
    assert line["helper"] == ["130102********0010", 12850]
    assert line["detail"] == {"patient": "130102********0029", "name": "张**",
                              "by_sender": {"130102********0010": 4000},
                              "people": [{"id_number": "130102********0010", "name": "李*"}],
                              "note": ["old 130102********0029"]}
    assert PATIENT not in lines.getvalue() and HELPER not in lines.getvalue()
