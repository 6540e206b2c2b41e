"""A family account's creation (with its first 划拨), an invitation and its acceptance cut by a crash at
every point they pass (SPEC §3b, §7): the resend with the same request id gets the answer the request
would have got had it not been cut, and a replay of it the same. Real registry 62 甘肃 and Redis."""

from __future__ import annotations

import functools
import re
from typing import Any

import pytest
from medaid.bench import money as verdict
from medaid.registry.v1 import family_pb2 as fpb
from support import FACE, RESIDENT, credit, enroll
from test_family import GS, PROMISE, create
from test_loop_answers import _crash_at

POINTS = ("family.before_create", "family.after_create", "family.after_transfer_entry", "family.before_debit",
          "family.after_debit", "family.before_credit", "family.after_credit", "family.before_invite",
          "family.after_invite", "family.after_entry", "family.before_end", "family.after_end")


def _create(stub: Any, people: dict[str, str], request_id: str) -> Any:
    return stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=request_id, creator_id_number=people["creator"], commitment=PROMISE,
        initial_transfer_fen=30_000))


def _invite(stub: Any, people: dict[str, str], request_id: str) -> Any:
    return stub.InviteMember(fpb.InviteMemberRequest(request_id=request_id, family_id=people["fid"],
                                                     creator_id_number=people["creator"],
                                                     member_id_number=people["child"], relation=1 + 2))


def _accept(stub: Any, people: dict[str, str], request_id: str) -> Any:
    return stub.RespondToInvitation(fpb.RespondToInvitationRequest(
        request_id=request_id, family_id=people["fid"], member_id_number=people["adult"], accept=True,
        verification=FACE))


FLOWS = {"create": _create, "invite": _invite, "accept": _accept}


def _people(stub: Any, flow: str) -> dict[str, str]:
    creator = enroll(stub, **GS)
    credit(stub, creator, 100_000)
    people = {"creator": creator, "child": enroll(stub, itype=RESIDENT, birth="20150101", **GS),
              "adult": enroll(stub, birth="20000101", **GS)}
    if flow != "create":
        people["fid"] = create(stub, creator, request_id=f"fam-{creator}").family_id
        stub.InviteMember(fpb.InviteMemberRequest(request_id=f"inv-{creator}", family_id=people["fid"],
                                                  creator_id_number=creator, member_id_number=people["adult"],
                                                  relation=3))
    return people


def _plain(answer: Any, people: dict[str, str]) -> str:
    text = str(answer)
    for name, value in people.items():
        text = text.replace(value, f"<{name}>")
    return re.sub(r"FA62\d+", "<fid>", text)


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_a_family_write_cut_by_a_crash_is_resent_to_its_uncut_answer(start_registry, rdb, flow):
    reg = start_registry("62")
    stub, call = reg.stub, FLOWS[flow]
    control = _people(stub, flow)
    control["rid"] = "uncut"
    expected = _plain(call(stub, control, "uncut"), control)
    passed: list[str] = []
    seen = _people(stub, flow)
    reg.registry.fault_hook = lambda p: passed.append(p)
    call(stub, seen, "seen")
    reg.registry.fault_hook = None
    points = [p for p in dict.fromkeys(passed) if p.startswith("family.")]
    for point in points:
        people = _people(stub, flow)
        people["rid"] = f"cut-{point}"
        try:
            _crash_at(reg, point, functools.partial(call, stub, people, f"cut-{point}"))
        except BaseException as exc:
            raise AssertionError(f"{flow} not cut at {point}") from exc
        finally:
            reg.registry.fault_hook = None
        resent = call(stub, people, f"cut-{point}")
        assert _plain(resent, people) == expected, f"{flow} cut at {point}"
        assert call(stub, people, f"cut-{point}") == resent
    report = verdict.check(rdb)
    assert report.conserved, report.as_dict()


def test_an_acceptance_cut_after_its_write_is_answered_as_written_whatever_came_since(start_registry, rdb):
    """The invitee's acceptance is written, then its process dies before the answer is recorded; the
    member is suspended before the client resends it. The member joined (the write stands and a
    suspension ends no place): the resend answers the account with them as a MEMBER, as the first
    attempt would have, and is not refused MEMBER_NOT_INSURED by the checks of a new acceptance."""
    from medaid.common.v1 import common_pb2 as cpb
    from medaid.registry.v1 import registry_pb2 as pb
    reg = start_registry("62")
    stub = reg.stub
    people = _people(stub, "accept")
    control = _people(stub, "accept")
    control["rid"], people["rid"] = "uncut", "cut-accept"
    expected = _plain(_accept(stub, control, "uncut"), control)
    _crash_at(reg, "family.after_respond", lambda: _accept(stub, people, "cut-accept"))
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id="suspend-adult", id_number=people["adult"],
                                                         status=cpb.PERSON_STATUS_SUSPENDED))
    resent = _accept(stub, people, "cut-accept")
    assert _plain(resent, people) == expected
    assert _accept(stub, people, "cut-accept") == resent
    assert verdict.check(rdb).conserved
