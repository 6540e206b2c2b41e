"""Which reason a bind is refused with when several apply (SPEC §3): the order docs/rules.md documents,
read from the document itself and checked against a real registry. Each row builds a pair for which
every reason it lists applies; the answer must be the first of them in the documented order, and the
refusal writes nothing."""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis
from conftest import policy_for
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as pb
from support import FACE, RESIDENT, bind, enroll, new_id, reason, rid, snapshot

RULES_MD = pathlib.Path(__file__).resolve().parent.parent / "docs" / "rules.md"


def documented_order() -> list[str]:
    """The reason codes of docs/rules.md's 'When several reasons apply' sentence, in its order."""
    found = re.search(r"`rules\.check_bind_people` then `lua/bind\.lua`:(.*?)\(so ", RULES_MD.read_text(), re.S)
    assert found, "docs/rules.md no longer documents the order of a bind's refusals"
    return re.findall(r"`([A-Z_]+)`", found.group(1))


ORDER = documented_order()
IN_LAW = cpb.RELATION_PARENT_IN_LAW
ELSEWHERE = "110000"  # the caller says the member is insured in 北京


@dataclass
class World:
    plain: Any  # 河北 with max_members = 1 and 共济 kept within one 统筹区
    exclusive: Any  # the same, exclusive (each person in one relationship at a time)

    def employee(self, region: str = "130100") -> str:
        return enroll(self.plain, region=region)

    def adult(self, region: str = "130100") -> str:
        return enroll(self.plain, itype=RESIDENT, birth="19900101", region=region)

    def suspended(self, pid: str) -> str:
        self.plain.UpdatePersonStatus(pb.UpdatePersonStatusRequest(
            request_id=rid("status"), id_number=pid, status=cpb.PERSON_STATUS_SUSPENDED))
        return pid

    def bound(self, helper: str, member: str) -> tuple[str, str]:
        bind(self.plain, helper, member)
        return helper, member


# A bind: (helper, member, relation, verified, member_insured_admdvs), built in a World.
Bind = tuple[str, str, int, bool, str]


def self_in_law(w: World) -> Bind:
    h = w.employee()
    return h, h, IN_LAW, False, ""


def in_law_strangers(w: World) -> Bind:
    return new_id(), new_id(), IN_LAW, False, ""


def stranger_helper_member_elsewhere(w: World) -> Bind:
    return new_id(), new_id(), cpb.RELATION_CHILD, False, ELSEWHERE


def suspended_resident_helper(w: World) -> Bind:
    return w.suspended(enroll(w.plain, itype=RESIDENT)), new_id(), cpb.RELATION_CHILD, False, ""


def resident_helper_member_elsewhere(w: World) -> Bind:
    return enroll(w.plain, itype=RESIDENT), new_id(), cpb.RELATION_CHILD, False, ELSEWHERE


def member_elsewhere(w: World) -> Bind:
    return w.employee(), new_id(), cpb.RELATION_CHILD, False, ELSEWHERE


def suspended_member_in_another_region(w: World) -> Bind:
    return w.employee(), w.suspended(w.adult("130200")), cpb.RELATION_CHILD, False, ""


def adult_in_another_region(w: World) -> Bind:
    return w.employee(), w.adult("130200"), cpb.RELATION_CHILD, False, ""


def bound_pair_member_suspended(w: World) -> Bind:
    h, m = w.bound(w.employee(), w.adult())
    w.suspended(m)
    return h, m, cpb.RELATION_CHILD, False, ""


def bound_pair_unverified(w: World) -> Bind:
    h, m = w.bound(w.employee(), w.adult())
    return h, m, cpb.RELATION_CHILD, False, ""


def bound_pair_verified(w: World) -> Bind:
    h, m = w.bound(w.employee(), w.adult())
    return h, m, cpb.RELATION_CHILD, True, ""


def reverse_of_a_binding_helper_full(w: World) -> Bind:
    a, b = w.bound(w.employee(), w.employee())
    w.bound(b, w.adult())
    return b, a, cpb.RELATION_PARENT, True, ""


def reverse_of_a_binding(w: World) -> Bind:
    a, b = w.bound(w.employee(), w.employee())
    return b, a, cpb.RELATION_PARENT, True, ""


def helper_full(w: World) -> Bind:
    h, _ = w.bound(w.employee(), w.adult())
    return h, w.adult(), cpb.RELATION_CHILD, True, ""


def helper_full_member_bound_elsewhere(w: World) -> Bind:
    """(A helper with several members is in one relationship: exclusivity is the member's one helper,
    and no one both helper and member.)"""
    h, _ = w.bound(w.employee(), w.adult())
    _, m = w.bound(w.employee(), w.adult())
    return h, m, cpb.RELATION_CHILD, True, ""


# (the pair, the registry that answers, every reason that applies to it)
ROWS: list[tuple[Callable[[World], Bind], str, set[str]]] = [
    (self_in_law, "plain", {"SELF_BINDING", "RELATION_NOT_ALLOWED", "VERIFICATION_REQUIRED"}),
    (in_law_strangers, "plain",
     {"RELATION_NOT_ALLOWED", "HELPER_NOT_INSURED", "MEMBER_NOT_INSURED", "VERIFICATION_REQUIRED"}),
    (stranger_helper_member_elsewhere, "plain",
     {"HELPER_NOT_INSURED", "CROSS_PROVINCE", "MEMBER_NOT_INSURED", "VERIFICATION_REQUIRED"}),
    (suspended_resident_helper, "plain",
     {"HELPER_NOT_ACTIVE", "HELPER_NOT_EMPLOYEE", "MEMBER_NOT_INSURED", "VERIFICATION_REQUIRED"}),
    (resident_helper_member_elsewhere, "plain",
     {"HELPER_NOT_EMPLOYEE", "CROSS_PROVINCE", "MEMBER_NOT_INSURED", "VERIFICATION_REQUIRED"}),
    (member_elsewhere, "plain", {"CROSS_PROVINCE", "MEMBER_NOT_INSURED", "VERIFICATION_REQUIRED"}),
    (suspended_member_in_another_region, "plain",
     {"MEMBER_NOT_INSURED", "DIFFERENT_POOLING_REGION", "VERIFICATION_REQUIRED"}),
    (adult_in_another_region, "plain", {"DIFFERENT_POOLING_REGION", "VERIFICATION_REQUIRED"}),
    (bound_pair_member_suspended, "exclusive",
     {"MEMBER_NOT_INSURED", "VERIFICATION_REQUIRED", "ALREADY_BOUND", "ALREADY_IN_ANOTHER_RELATION",
      "MEMBER_LIMIT_REACHED"}),
    (bound_pair_unverified, "exclusive",
     {"VERIFICATION_REQUIRED", "ALREADY_BOUND", "ALREADY_IN_ANOTHER_RELATION", "MEMBER_LIMIT_REACHED"}),
    (bound_pair_verified, "exclusive", {"ALREADY_BOUND", "ALREADY_IN_ANOTHER_RELATION", "MEMBER_LIMIT_REACHED"}),
    (reverse_of_a_binding_helper_full, "plain", {"REVERSE_BINDING", "MEMBER_LIMIT_REACHED"}),
    (reverse_of_a_binding, "exclusive", {"REVERSE_BINDING", "ALREADY_IN_ANOTHER_RELATION"}),
    (helper_full_member_bound_elsewhere, "exclusive", {"ALREADY_IN_ANOTHER_RELATION", "MEMBER_LIMIT_REACHED"}),
    (helper_full, "plain", {"MEMBER_LIMIT_REACHED"}),
]


def first_documented(applies: set[str]) -> str:
    return min(applies, key=ORDER.index)


def test_the_table_names_the_documented_reasons_and_each_wins_once():
    assert len(ORDER) == len(set(ORDER)) == 13, ORDER
    assert set().union(*(applies for _, _, applies in ROWS)) == set(ORDER)
    assert {first_documented(applies) for _, _, applies in ROWS} == set(ORDER)


@pytest.fixture
def world(start_registry) -> World:
    plain = dataclasses.replace(policy_for("13"), max_members=1, cross_region_allowed=False)
    return World(start_registry("13", policy=plain).stub,
                 start_registry("13", policy=dataclasses.replace(plain, exclusive=True)).stub)


@pytest.mark.parametrize("build,registry,applies", ROWS,
                         ids=[f"{build.__name__}-{registry}" for build, registry, _ in ROWS])
def test_a_bind_is_refused_with_the_first_documented_reason_that_applies(
        world: World, rdb: redis.Redis, build: Callable[[World], Bind], registry: str, applies: set[str]):
    helper, member, relation, verified, insured = build(world)
    stub = world.exclusive if registry == "exclusive" else world.plain
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        bind(stub, helper, member, relation, verification=FACE if verified else None,
             member_insured_admdvs=insured)
    assert reason(ei.value) == first_documented(applies), ei.value.details()
    assert snapshot(rdb) == before, f"the refusal {reason(ei.value)} wrote to Redis"
