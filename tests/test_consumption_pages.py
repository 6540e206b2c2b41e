"""ListConsumptionRecords a page at a time, on a real registry: every record once, in a stable order,
records of one millisecond included, whatever is written while a list is being paged through; a token
that is not the registry's, or is another listing's, refused with INVALID_PAGE_TOKEN."""

from __future__ import annotations

import base64
import functools
from typing import Any

import grpc
import pytest
from medaid.common.errors import error_info
from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway.reasons import REASON_ZH
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, bind, credit, enroll, reason, settle, snapshot
from test_family import GS, create, huabo, invite
from test_helper_modes import BEIJING, HELPERS, family, settle_req

Rec = tuple[str, str, str, int]  # settlement id, role, helper, amount


def pair(stub: Any) -> tuple[str, str]:
    member, helper = enroll(stub, birth="19600101"), enroll(stub, birth="19880101")
    credit(stub, helper, 1_000_000)
    bind(stub, helper, member, relation=cpb.RELATION_PARENT)
    return member, helper


def page(stub: Any, pid: str, size: int, token: str = "", **kw: Any) -> tuple[list[Rec], str]:
    r = stub.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=pid, page_size=size, page_token=token,
                                                                     **kw))
    return [(x.settlement_id, x.role, x.helper_id_number, x.mulaid_pay_fen) for x in r.records], r.next_page_token


def every_page(stub: Any, pid: str, size: int, **kw: Any) -> list[list[Rec]]:
    pages, token = [], ""
    while True:
        got, token = page(stub, pid, size, token, **kw)
        pages.append(got)
        if not token:
            return pages


def test_pages_list_every_record_once_newest_first_with_ties_in_a_fixed_order(hebei: Any) -> None:
    """120 bills, most of them in one millisecond (the test clock stands still): pages of 50 list them
    all, each once, in the order one page of all of them gives, the last page with no next token."""
    stub = hebei.stub
    member, helper = pair(stub)
    sids = []
    for i in range(120):
        sids.append(settle(stub, member, 1 + i).settlement_id)
        if i % 40 == 39:
            hebei.clock.advance(1)
    for who, role in ((member, "MEMBER"), (helper, "HELPER")):
        whole, token = page(stub, who, 500)
        assert token == "" and len(whole) == 120
        assert [x[0] for x in whole] == sids[::-1]  # newest first; one millisecond in the order of its ids
        assert {x[1] for x in whole} == {role}
        pages = every_page(stub, who, 50)
        assert [len(p) for p in pages] == [50, 50, 20]
        assert [x for p in pages for x in p] == whole
        # Any page size, the older field `limit`, and a page size changed between pages agree.
        assert [x for p in every_page(stub, who, 7) for x in p] == whole
        first, token = page(stub, who, 0, limit=30)
        rest, end = page(stub, who, 100, token)
        assert first + rest == whole and end == ""
    # Exactly a page full: no next token, nothing more to ask for.
    assert page(stub, member, 120)[1] == "" and len(page(stub, member, 119)[1]) > 0


def test_records_of_one_settlement_page_apart_in_the_order_they_were_written(start_registry: Any) -> None:
    """北京 (helpers pay in turn): a member whose bill three helpers paid has three records of one
    settlement and one millisecond; pages of one list each once, the helper charged last first (as one
    page of all does)."""
    stub = start_registry("11", policy=BEIJING).stub
    fam = family(stub, "11", HELPERS)
    res = stub.Settle(settle_req(fam, "11", 10_000)).result
    paid = [(c.helper_id_number, c.amount_fen) for c in res.helper_charges]
    assert len(paid) == 3
    want = [(res.settlement_id, "MEMBER", h, fen) for h, fen in reversed(paid)]
    assert page(stub, fam.member, 10)[0] == want
    assert every_page(stub, fam.member, 1) == [[x] for x in want]


def test_records_written_while_paging_neither_skip_nor_repeat_older_ones(hebei: Any) -> None:
    """Between two pages new bills are settled, in the millisecond of the page's last record and later,
    and one is dated before every listed record (a settlement the recovery loop finishes late keeps
    its own time): the pages go on where they stopped, list each older record once, the late old one
    among them, and none of the newer ones."""
    stub = hebei.stub
    member, _ = pair(stub)
    start = hebei.clock.now_ms()
    hebei.clock.advance(10_000)
    before = [settle(stub, member, 100 + i).settlement_id for i in range(30)]
    first, token = page(stub, member, 10)
    assert [x[0] for x in first] == before[::-1][:10]
    newer = [settle(stub, member, 1).settlement_id]  # the same millisecond, a larger id: newer
    hebei.clock.advance(5)
    newer.append(settle(stub, member, 2).settlement_id)
    hebei.clock.set(start)
    late = settle(stub, member, 3).settlement_id  # older than every record listed
    rest: list[Rec] = []
    while token:
        got, token = page(stub, member, 10, token)
        rest += got
    listed = [x[0] for x in first + rest]
    assert listed == before[::-1] + [late]
    assert not set(newer) & set(listed)
    # A new listing begins with them.
    assert [x[0] for x in page(stub, member, 3)[0]] == newer[::-1] + [before[-1]]


def test_a_contributors_records_in_a_pooled_province_page_across_members(start_registry: Any) -> None:
    """甘肃 (pooled, SPEC §3b): the bills a contributor's share paid are on two members' records; the
    contributor's pages list them all once, newest first, as one page does."""
    stub = start_registry("62").stub
    creator = enroll(stub, **GS)
    kids = [enroll(stub, itype=RESIDENT, birth=b, **GS) for b in ("20150101", "20160101")]
    credit(stub, creator, 100_000)
    fid = create(stub, creator).family_id
    for kid in kids:
        invite(stub, fid, creator, kid)
    huabo(stub, fid, creator, 50_000)
    sids = [settle(stub, kids[i % 2], 100 + i).settlement_id for i in range(9)]
    whole, token = page(stub, creator, 500)
    assert token == "" and [x[0] for x in whole] == sids[::-1] and {x[1] for x in whole} == {"HELPER"}
    assert [x for p in every_page(stub, creator, 2) for x in p] == whole
    assert [len(p) for p in every_page(stub, creator, 3)] == [3, 3, 3]


def refused(rdb: Any, call: Any, why: str, field: str) -> None:
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(err.value) == why, err.value.details()
    info = error_info(err.value)
    assert info is not None and info.metadata.get("field") == field, info
    assert snapshot(rdb) == before


def test_a_token_not_given_for_this_listing_is_refused(hebei: Any, rdb: Any) -> None:
    """Garbage, a token edited, or one given for another person or another month: INVALID_ARGUMENT
    INVALID_PAGE_TOKEN naming page_token (with Chinese text for the desk), nothing written; page
    sizes out of 1..500, or page_size and limit that disagree: INVALID_LIMIT."""
    stub = hebei.stub
    member, helper = pair(stub)
    for i in range(3):
        settle(stub, member, 10 + i)
    _, token = page(stub, member, 1)
    _, month_token = page(stub, member, 1, since_unix_ms=1)
    assert token and month_token and token != month_token
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    assert member not in raw and helper not in raw  # no id number in a token
    edited = base64.urlsafe_b64encode(("2" + raw[1:]).encode()).decode()
    for bad, kw in (("x", {}), ("!!!!", {}), ("%%", {}), (token + "A" * 300, {}), (token[:-3], {}), (edited, {}),
                    ("中文", {}),
                    (token[:8] + "\x01" + token[8:], {}), (token[:8] + "=" + token[8:], {}),
                    (base64.urlsafe_b64encode(b"1:zz:1:1:zz:s").decode(), {}),
                    (token, {"id_number": helper}), (token, {"since_unix_ms": 1}), (month_token, {})):
        req = pb.ListConsumptionRecordsRequest(page_token=bad, **{"id_number": member, **kw})
        refused(rdb, functools.partial(stub.ListConsumptionRecords, req), "INVALID_PAGE_TOKEN", "page_token")
    assert "翻页" in REASON_ZH["INVALID_PAGE_TOKEN"]
    for size, limit, field in ((501, 0, "page_size"), (-1, 0, "page_size"), (0, 501, "limit"), (10, 20, "page_size")):
        req = pb.ListConsumptionRecordsRequest(id_number=member, page_size=size, limit=limit)
        refused(rdb, functools.partial(stub.ListConsumptionRecords, req), "INVALID_LIMIT", field)
    assert len(page(stub, member, 500, limit=500)[0]) == 3
