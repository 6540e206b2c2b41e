"""SPEC §3/§3b/§4 policy knobs the shipped files leave at their defaults, set otherwise on a real
registry: `face_verification_age` moves the face-verification birthday of a binding (河北) and of
accepting a family invitation (甘肃); and a minimal policy file takes SPEC's defaults for the model,
the helper rules and the payable categories."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest
from conftest import policy_for
from medaid.registry.policy import ALWAYS_PAYABLE, load
from medaid.registry.v1 import family_pb2 as fpb
from support import RESIDENT, bind, credit, enroll
from test_family import GS, accept, create, invite, refused

FP = grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(("birth", "needs_face"), [("20081121", True), ("20081122", True), ("20081123", False),
                                                  ("20101122", False)])
def test_face_verification_age_moves_the_binding_birthday(start_registry, rdb, birth, needs_face):
    """At 18 (not 16): 18 yesterday or today needs face verification; 17, or 16 today, does not."""
    stub = start_registry("13", policy=dataclasses.replace(policy_for("13"), face_verification_age=18)).stub
    helper, member = enroll(stub), enroll(stub, itype=RESIDENT, birth=birth)
    if needs_face:
        refused(rdb, lambda: bind(stub, helper, member, verification=None), FP, "VERIFICATION_REQUIRED")
        assert bind(stub, helper, member).binding.active
    else:
        assert bind(stub, helper, member, verification=None).binding.active


@pytest.mark.parametrize(("birth", "needs_face"), [("20081122", True), ("20081123", False)])
def test_face_verification_age_moves_the_invitation_birthday(start_registry, rdb, birth, needs_face):
    stub = start_registry("62", policy=dataclasses.replace(policy_for("62"), face_verification_age=18)).stub
    creator, kin = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth=birth, **GS)
    credit(stub, creator, 1_000)
    fid = create(stub, creator).family_id
    account = invite(stub, fid, creator, kin)
    state = next(m.state for m in account.members if m.id_number == kin)
    if needs_face:  # 18 today: invited, accepts with face verification only
        assert state == fpb.MEMBERSHIP_STATE_INVITED
        refused(rdb, lambda: accept(stub, fid, kin, face=False), FP, "VERIFICATION_REQUIRED")
        accept(stub, fid, kin)
    else:  # 17: joins at once
        assert state == fpb.MEMBERSHIP_STATE_MEMBER


def test_a_minimal_policy_file_takes_the_spec_defaults(tmp_path: Path):
    path = tmp_path / "13-min.toml"
    path.write_text('province = "13"\nname = "河北省"\n[regions]\n"130100" = "石家庄市"\n', encoding="utf-8")
    p = load(path)
    assert (p.model, p.helper_selection, p.helper_partial, p.helpers_in_turn) == \
        ("BIND_AND_DEDUCT", "LARGEST_BALANCE", False, False)
    assert p.payable_categories == ALWAYS_PAYABLE
    assert not p.category_payable("CHECKUP") and not p.category_payable("VACCINE")
    assert (p.max_members, p.face_verification_age, p.exclusive, p.cross_region_allowed) == (8, 16, False, True)
