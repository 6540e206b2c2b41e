"""The 家庭共济账户 page for a person with several family accounts (福建, SPEC §3b: not exclusive), against
a real registry: the desk reaches each of them and acts on the one the operator chose."""

from __future__ import annotations

import asyncio
import html
import re
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from medaid.common.clock import FixedClock
from medaid.common.v1 import common_pb2 as cpb
from medaid.console.backend import Backend
from medaid.console.web import Console, make_app, new_request_id
from medaid.registry.v1 import family_pb2 as fpb
from support import FACE, balance, credit, enroll, rid
from test_console_http import operators_for_tests, signed_in


def family_console(registry_port: int) -> Console:
    return Console(Backend({"35": f"127.0.0.1:{registry_port}"}, ""), operators_for_tests(), b"s" * 32,
                   FixedClock(1_795_800_000_000))


def forms_family_ids(page: str) -> set[str]:
    return set(re.findall(r'name="family_id" value="([^"]+)"', page))


async def serving_people_of_two_accounts(registry_port: int, creator_b: str, member_c: str,
                                         fa1: str, fa2: str) -> dict[str, Any]:
    console = family_console(registry_port)
    seen: dict[str, Any] = {}
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)

        async def family_url(pid: str) -> str:
            found = await client.post("/lookup", data={"csrf": csrf, "id_number": pid}, allow_redirects=False)
            return str(found.headers["Location"]).replace("/person?", "/family?")

        async def page_of(url: str, fid: str) -> tuple[str, str]:
            """The person's page, then the page of account `fid` reached by its link on it."""
            first = await (await client.get(url)).text()
            links = {html.unescape(h) for h in re.findall(r'<a [^>]*href="(/family\?[^"]+)"', first)}
            chosen = [h for h in links if h.endswith(f"f={fid}")]
            seen.setdefault("links", []).append(sorted(h.rsplit("f=", 1)[-1] for h in links if "f=" in h))
            assert chosen, (fid, links)
            return chosen[0], await (await client.get(chosen[0])).text()

        # C is a member of FA1 and invited to FA2: C accepts FA2's invitation at the desk.
        url, page = await page_of(await family_url(member_c), fa2)
        seen["c_forms"] = forms_family_ids(page)
        resp = await client.post(url.replace("/family?", "/family/respond?"), data={
            "csrf": csrf, "request_id": new_request_id(), "family_id": fa2, "answer": "accept",
            "attestation": "face-9"})
        seen["respond"] = resp.status
        # B created FA2 and is a member of FA1: B 划拨 into FA1, then leaves FA1.
        url, page = await page_of(await family_url(creator_b), fa1)
        seen["b_forms"] = forms_family_ids(page)
        for action, extra in (("transfer", {"amount": "100"}), ("leave", {})):
            resp = await client.post(url.replace("/family?", f"/family/{action}?"), data={
                "csrf": csrf, "request_id": new_request_id(), "family_id": fa1, **extra})
            seen[action] = (resp.status, forms_family_ids(await resp.text()))
    await console.backend.close()
    return seen


def test_a_person_in_several_family_accounts_is_served_in_each(start_registry: Any) -> None:
    fujian = start_registry("35")
    a, b, c = (enroll(fujian.stub, region="350100", division="350102") for _ in range(3))
    for pid in (a, b):
        credit(fujian.stub, pid, 500_000)

    def create(creator: str) -> str:
        return str(fujian.stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
            request_id=rid("create"), creator_id_number=creator, commitment=FACE)).account.family_id)

    def invite(fid: str, creator: str, member: str) -> None:
        fujian.stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("invite"), family_id=fid,
                                                         creator_id_number=creator, member_id_number=member,
                                                         relation=cpb.RELATION_SIBLING))

    fa1, fa2 = create(a), create(b)
    for member in (b, c):
        invite(fa1, a, member)
        fujian.stub.RespondToInvitation(fpb.RespondToInvitationRequest(
            request_id=rid("respond"), family_id=fa1, member_id_number=member, accept=True, verification=FACE))
    invite(fa2, b, c)

    seen = asyncio.run(serving_people_of_two_accounts(fujian.port, b, c, fa1, fa2))
    # Each person's page links to both of their accounts; each form names the account chosen.
    assert seen["links"] == [sorted([fa1, fa2])] * 2
    assert seen["c_forms"] == {fa2} and seen["b_forms"] == {fa1}
    assert seen["respond"] == 200
    assert seen["transfer"] == (200, {fa1}) and seen["leave"][0] == 200
    states = {fid: {m.id_number: m.state for m in fujian.stub.GetFamilyAccount(
        fpb.GetFamilyAccountRequest(family_id=fid)).account.members} for fid in (fa1, fa2)}
    assert states[fa2][c] == fpb.MEMBERSHIP_STATE_MEMBER
    assert states[fa1][b] == fpb.MEMBERSHIP_STATE_ENDED and states[fa1][c] == fpb.MEMBERSHIP_STATE_MEMBER
    # The ¥100 划拨 went into FA1 and came back when B left: B's account is whole, FA1 empty.
    assert balance(fujian.stub, b) == 500_000
    history = fujian.stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fa1)).account.history
    assert [(e.kind, e.amount_fen) for e in history if e.id_number == b and e.amount_fen] == [
        ("TRANSFER_IN", 10_000), ("RETURNED", 10_000)]


def test_a_registry_lists_each_family_account_of_a_person_with_their_role(start_registry: Any) -> None:
    fujian = start_registry("35")
    a, b = (enroll(fujian.stub, region="350100", division="350102") for _ in range(2))
    fa1 = fujian.stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("create"), creator_id_number=a, commitment=FACE)).account.family_id
    fa2 = fujian.stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("create"), creator_id_number=b, commitment=FACE)).account.family_id
    fujian.stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("invite"), family_id=fa1, creator_id_number=a,
                                                     member_id_number=b, relation=cpb.RELATION_SIBLING))
    got = fujian.stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=b))
    assert got.account.family_id == fa2  # the one B created, as before
    assert [(m.family_id, m.creator_id_number, m.state, m.creator) for m in got.memberships] == [
        (fa1, a, fpb.MEMBERSHIP_STATE_INVITED, False), (fa2, b, fpb.MEMBERSHIP_STATE_MEMBER, True)]
    # B's own account is the one that pays B's bills (B is only invited to FA1).
    assert [m.family_id for m in got.memberships if m.settles] == [fa2]
    # Asked for another account by id, the person's memberships come with it.
    other = fujian.stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fa1, id_number=b))
    assert other.account.family_id == fa1 and len(other.memberships) == 2


async def inviting_with_a_slip(registry_port: int, creator: str, fid: str) -> tuple[int, str]:
    console = family_console(registry_port)
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        resp = await client.post(f"/family/invite?p={console.ref(creator)}", data={
            "csrf": csrf, "request_id": new_request_id(), "family_id": fid, "member": "12345",
            "relation": "SIBLING", "temporary": "1"})
        form = re.search(r'id="invite-form">(.*?)</form>', await resp.text(), re.S)
    await console.backend.close()
    return resp.status, form.group(1) if form else ""


def test_a_refused_invitation_keeps_the_temporary_member_box_ticked(start_registry: Any) -> None:
    fujian = start_registry("35")
    creator = enroll(fujian.stub, region="350100", division="350102")
    fid = fujian.stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("create"), creator_id_number=creator, commitment=FACE)).account.family_id
    status, form = asyncio.run(inviting_with_a_slip(fujian.port, creator, fid))
    assert status == 422 and 'value="12345"' in form, form
    assert re.search(r'<input type="checkbox" name="temporary" value="1"[^>]*\bchecked\b', form), form


async def transferring(registry_port: int, contributor: str, fid: str, amount: str) -> tuple[int, str]:
    console = family_console(registry_port)
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        resp = await client.post(f"/family/transfer?p={console.ref(contributor)}", data={
            "csrf": csrf, "request_id": new_request_id(), "family_id": fid, "amount": amount})
        page = await resp.text()
    await console.backend.close()
    return resp.status, page


def test_an_amount_over_the_limit_is_refused_with_the_limit_in_yuan(start_registry: Any) -> None:
    """A 划拨 of an amount past one operation's limit: the amount field says AMOUNT_TOO_LARGE's words
    and the limit, in yuan, as every other refusal that names a limit does; nothing moves."""
    fujian = start_registry("35")
    creator = enroll(fujian.stub, region="350100", division="350102")
    credit(fujian.stub, creator, 500_000)
    fid = fujian.stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("create"), creator_id_number=creator, commitment=FACE)).account.family_id
    for amount in ("10000000000.01", "10,000,000,000.01", "99999999999999"):
        status, page = asyncio.run(transferring(fujian.port, creator, fid, amount))
        error = re.search(r'id="transfer-amount-error"[^>]*>([^<]*)<', page)
        assert status == 422 and error is not None, (amount, re.findall(r'role="alert"[^>]*>([^<]*)<', page))
        assert error.group(1) == ("金额超过单笔上限(每笔最多10000000000元);"
                                  "本次未受理,请更正后重新提交"), (amount, error.group(1))
    assert balance(fujian.stub, creator) == 500_000
    history = fujian.stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account.history
    assert not [e for e in history if e.amount_fen]
