"""The 代缴居民医保 page against real registries: a payment is cancelled with the registry that holds
it, the one the page lists it from (the payer's, SPEC §4b)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from medaid.common.v1 import common_pb2 as cpb
from medaid.console.web import make_app
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, balance, credit, enroll, rid
from test_console_forms import national_console, outcome
from test_console_http import signed_in

YEAR = "2027"  # the tests' today is 2026-11-22: inside the 2027 window


async def cancelling_at_the_desk(national: Any, payer: str) -> tuple[int, list[str], list[str]]:
    console = national_console(national)
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        url = f"/premium?p={console.ref(payer)}"
        page = await (await client.get(url)).text()
        row = re.search(r'<form method="post" action="(/premium/cancel\?[^"]+)" class="inline">(.*?)</form>',
                        page, re.S)
        assert row, page
        fields = dict(re.findall(r'name="([a-z_]+)" value="([^"]*)"', row.group(2)))
        resp = await client.post(row.group(1).replace("&amp;", "&"), data={**fields, "csrf": csrf})
        done, refused = outcome(await resp.text())
    await console.backend.close()
    return resp.status, done, refused


def test_a_premium_is_cancelled_where_it_was_paid_after_the_payee_moved(national: Any) -> None:
    r13, r11 = national.reg("13"), national.reg("11")
    payer = enroll(r13)
    kid = enroll(r13, itype=RESIDENT, birth="20100101")
    credit(r13, payer, 100_000)
    r13.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=payer, payee_id_number=kid, relation=cpb.RELATION_CHILD,
        year=YEAR, source=ppb.PREMIUM_SOURCE_ACCOUNT))
    paid = balance(r13, payer)
    assert paid < 100_000
    # The child moves to 北京 and is insured there now; the payment stays with the payer's registry.
    r13.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=kid,
                                                        status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"))
    r11.EnrollPerson(pb.EnrollPersonRequest(request_id=rid("enroll"), id_number=kid, name="张三",
                                            insurance_type=RESIDENT, pooling_region="110000"))
    status, done, refused = asyncio.run(cancelling_at_the_desk(national, payer))
    assert (status, refused) == (200, []) and len(done) == 1, (status, done, refused)
    assert balance(r13, payer) == 100_000
    listed = r13.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payer_id_number=payer)).premiums
    assert [p.state for p in listed] == ["CANCELLED"]
