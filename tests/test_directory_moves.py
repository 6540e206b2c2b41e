"""The national person directory across moves of province (SPEC §5b, docs/wallet-and-life-cycle.md
decision 9): whatever order two provinces' status events reach it in, a 1101 or 2207 without
`insuplc_admdvs` is routed to a province that holds the person ACTIVE or SUSPENDED whenever one does.

Real registries 13 河北 and 11 北京, the router and Redis, in-process (the `national` fixture)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from conftest import National, RunningRouter
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.v1 import router_pb2 as pb
from support import enroll, reason, rid, snapshot

HEBEI = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")  # 石家庄
HOLDING = (cpb.PERSON_STATUS_ACTIVE, cpb.PERSON_STATUS_SUSPENDED)
_seq = itertools.count(1)


def msgid() -> str:
    return f"{HEBEI.fixmedins_code}20261122110000{next(_seq) % 10_000:04d}"


def status(national: National, prov: str, pid: str, st: int, moved_to: str = "") -> None:
    national.reg(prov).UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=pid, status=st, moved_to_province=moved_to))


def enrol_in_beijing(national: National, pid: str) -> None:
    national.reg("11").EnrollPerson(rpb.EnrollPersonRequest(
        request_id=rid("enroll"), id_number=pid, name="张三", insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
        pooling_region="110000"))


def held(national: National, pid: str) -> dict[str, int]:
    """Each province's status of the person, for those that enrolled them."""
    out: dict[str, int] = {}
    for prov in ("13", "11"):
        try:
            out[prov] = national.reg(prov).GetPerson(rpb.GetPersonRequest(id_number=pid)).person.status
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
    return out


def routed(router: RunningRouter, pid: str) -> tuple[str, int]:
    """A 1101 without insuplc_admdvs: (the province of the record it answered, its status)."""
    insu = router.stub.QueryPerson(pb.QueryPersonRequest(msgid=msgid(), institution=HEBEI, mdtrt_cert_type="02",
                                                         mdtrt_cert_no=pid), timeout=10).insuinfo[0]
    return str(insu.insuplc_admdvs)[:2], insu.psn_insu_stas


def assert_routed_to_a_holder(national: National, router: RunningRouter, rdb: Any, pid: str, story: str) -> None:
    holders = {prov for prov, st in held(national, pid).items() if st in HOLDING}
    if not holders:
        return
    province = (rdb.hget(f"dir:{{psn:{pid}}}", "province") or b"").decode()
    assert province in holders, f"{story}: the directory names {province}, the person is held by {holders}"
    prov, st = routed(router, pid)
    assert prov in holders and st in HOLDING, f"{story}: a 1101 reached {prov} ({st}), held by {holders}"


@pytest.fixture
def router(start_router: Callable[..., RunningRouter]) -> RunningRouter:
    return start_router()


def test_a_replayed_termination_after_a_late_activation_leaves_the_person_routed_to_the_new_province(
        national: National, router: RunningRouter, rdb: Any):
    """13 records the move to 11; 11 enrols them; a late ACTIVE reaches 13 (a re-enrolment: the
    directory may follow it); then 13's termination is replayed. 11 holds the person ACTIVE: the
    directory and a 1101 without insuplc_admdvs go to 11, not to 13, which would refuse their bills."""
    pid = enroll(national.reg("13"))
    status(national, "13", pid, cpb.PERSON_STATUS_TERMINATED, "11")
    enrol_in_beijing(national, pid)
    status(national, "13", pid, cpb.PERSON_STATUS_ACTIVE)
    status(national, "13", pid, cpb.PERSON_STATUS_TERMINATED, "11")
    assert held(national, pid) == {"13": cpb.PERSON_STATUS_TERMINATED, "11": cpb.PERSON_STATUS_ACTIVE}
    assert rdb.hmget(f"dir:{{psn:{pid}}}", ["province", "status", "moved_to"]) == [b"11", b"ACTIVE", b""]
    assert routed(router, pid) == ("11", cpb.PERSON_STATUS_ACTIVE)


def test_a_termination_gives_the_directory_back_to_a_suspended_holder(
        national: National, router: RunningRouter, rdb: Any):
    """Suspended in 11 while 13 held the directory entry: 13's termination gives it back to 11, as
    SUSPENDED (a 1101 answers the suspension; it is not refused as unknown)."""
    pid = enroll(national.reg("13"))
    status(national, "13", pid, cpb.PERSON_STATUS_TERMINATED, "11")
    enrol_in_beijing(national, pid)
    status(national, "13", pid, cpb.PERSON_STATUS_ACTIVE)
    status(national, "11", pid, cpb.PERSON_STATUS_SUSPENDED)
    status(national, "13", pid, cpb.PERSON_STATUS_TERMINATED, "11")
    assert rdb.hmget(f"dir:{{psn:{pid}}}", ["province", "status", "moved_to"]) == [b"11", b"SUSPENDED", b""]
    assert routed(router, pid) == ("11", cpb.PERSON_STATUS_SUSPENDED)


def test_a_death_keeps_the_directory_where_it_was_recorded(national: National, router: RunningRouter, rdb: Any):
    """A death is not a move: recorded by the province that holds the directory entry, the entry says
    DECEASED there even while another province still holds the person ACTIVE (a 亲情账户 or wallet
    check reading the directory must not take a dead person for ACTIVE)."""
    pid = enroll(national.reg("13"))
    status(national, "13", pid, cpb.PERSON_STATUS_TERMINATED, "11")
    enrol_in_beijing(national, pid)
    status(national, "13", pid, cpb.PERSON_STATUS_ACTIVE)
    national.reg("13").RecordDeath(rpb.RecordDeathRequest(
        request_id=rid("death"), id_number=pid, heir_id_number=enroll(national.reg("13")), heir_name="张继承",
        date_of_death="20261121"))
    assert rdb.hmget(f"dir:{{psn:{pid}}}", ["province", "status"]) == [b"13", b"DECEASED"]


def test_a_person_recorded_dead_is_not_enrolled_in_another_province(national: National, router: RunningRouter,
                                                                     rdb: Any):
    """SPEC §5b: a death is final. Once a province recorded it (the directory says DECEASED), another
    province's enrolment of the same id number is refused PERSON_DECEASED and writes nothing: it would
    take the directory entry as ACTIVE, and 1101/2207 would treat the dead person as insured."""
    pid = enroll(national.reg("13"))
    national.reg("13").RecordDeath(rpb.RecordDeathRequest(
        request_id=rid("death"), id_number=pid, heir_id_number=enroll(national.reg("13")), heir_name="张继承",
        date_of_death="20261121"))
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        enrol_in_beijing(national, pid)
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "PERSON_DECEASED")
    assert snapshot(rdb) == before
    assert rdb.hmget(f"dir:{{psn:{pid}}}", ["province", "status"]) == [b"13", b"DECEASED"]


# Each province's events in the order it records them; the two provinces' events reach the directory
# in any interleaving.
HEBEI_EVENTS = (("13", "TERMINATED", "11"), ("13", "ACTIVE", ""), ("13", "TERMINATED", "11"))
BEIJING_EVENTS = (("11", "ENROL", ""), ("11", "SUSPENDED", ""), ("11", "TERMINATED", "13"))


def interleavings(a: tuple[Any, ...], b: tuple[Any, ...]) -> Iterator[list[Any]]:
    for slots in itertools.combinations(range(len(a) + len(b)), len(a)):
        ia, ib = iter(a), iter(b)
        yield [next(ia) if i in slots else next(ib) for i in range(len(a) + len(b))]


def test_every_interleaving_of_two_provinces_events_routes_to_a_holder(
        national: National, router: RunningRouter, rdb: Any):
    """13 records a move to 11, a late ACTIVE and the move again; 11 enrols, suspends and records a
    move to 13. In each of the 20 interleavings, after every event the directory names a province that
    holds the person ACTIVE or SUSPENDED whenever one does, and a 1101 without insuplc_admdvs reaches it."""
    orders = list(interleavings(HEBEI_EVENTS, BEIJING_EVENTS))
    assert len(orders) == 20
    for order in orders:
        pid = enroll(national.reg("13"))
        story: list[str] = []
        for prov, what, moved_to in order:
            story.append(f"{prov} {what}{'→' + moved_to if moved_to else ''}")
            if what == "ENROL":
                enrol_in_beijing(national, pid)
            else:
                status(national, prov, pid, cpb.PersonStatus.Value(f"PERSON_STATUS_{what}"), moved_to)
            assert_routed_to_a_holder(national, router, rdb, pid, ", ".join(story))


class Crash(Exception):
    pass


def crashed_status(national: National, prov: str, pid: str, st: int, moved_to: str = "") -> None:
    """A status change the registry dies on right after writing it (in-process fault): what follows,
    the directory first, is left to the recovery loop."""
    registry = national.registries[prov].registry

    def hook(point: str) -> None:
        if point == "status.after_write":
            raise Crash(point)

    registry.fault_hook = hook
    try:
        with pytest.raises(grpc.RpcError):
            status(national, prov, pid, st, moved_to)
    finally:
        registry.fault_hook = None


def recover(national: National, loop_thread: Any, prov: str) -> None:
    running = national.registries[prov]
    running.clock.advance(60_000)
    assert loop_thread.run(running.registry.recover()).lifecycle == 1


def test_a_status_change_finished_by_recovery_after_a_later_one_tells_the_directory_the_later(
        national: National, router: RunningRouter, rdb: Any, loop_thread: Any):
    """The registry dies after writing 13's re-activation, before the directory; 13 then records the
    move to 11 again (11 holds the person ACTIVE). The recovery loop finishing the re-activation tells
    the directory the person as 13 holds them now (TERMINATED), not the ACTIVE it wrote earlier: the
    directory and a 1101 without insuplc_admdvs stay with 11."""
    pid = enroll(national.reg("13"))
    status(national, "13", pid, cpb.PERSON_STATUS_TERMINATED, "11")
    enrol_in_beijing(national, pid)
    crashed_status(national, "13", pid, cpb.PERSON_STATUS_ACTIVE)
    status(national, "13", pid, cpb.PERSON_STATUS_TERMINATED, "11")
    recover(national, loop_thread, "13")
    assert held(national, pid) == {"13": cpb.PERSON_STATUS_TERMINATED, "11": cpb.PERSON_STATUS_ACTIVE}
    assert rdb.hmget(f"dir:{{psn:{pid}}}", ["province", "status"]) == [b"11", b"ACTIVE"]
    assert routed(router, pid) == ("11", cpb.PERSON_STATUS_ACTIVE)


def test_a_termination_finished_by_recovery_after_a_re_activation_leaves_the_directory_active(
        national: National, rdb: Any, loop_thread: Any):
    """The registry dies after writing a termination, before the directory; the person is enrolled
    again (ACTIVE) before the recovery loop finishes it. The directory says ACTIVE, as the registry does
    (a 亲情账户 or wallet check reading it must not refuse an insured person)."""
    pid = enroll(national.reg("13"))
    crashed_status(national, "13", pid, cpb.PERSON_STATUS_TERMINATED, "11")
    status(national, "13", pid, cpb.PERSON_STATUS_ACTIVE)
    recover(national, loop_thread, "13")
    assert held(national, pid) == {"13": cpb.PERSON_STATUS_ACTIVE}
    assert rdb.hgetall(f"dir:{{psn:{pid}}}") == {b"province": b"13", b"status": b"ACTIVE", b"moved_to": b""}


def _bind_in_hebei(national: National, helper: str, member: str) -> grpc.RpcError:
    req = rpb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=helper, member_id_number=member,
                                   relation=cpb.RELATION_PARENT)
    req.member_verification.method = cpb.VERIFICATION_METHOD_FACE
    req.member_verification.attestation_id = "face-0001"
    with pytest.raises(grpc.RpcError) as err:
        national.reg("13").BindMutualAid(req)
    return err.value


@pytest.mark.parametrize("end", ["TERMINATED", "DECEASED"])
def test_a_person_insured_nowhere_is_not_called_insured_in_the_province_that_ended_them(
        national: National, rdb: Any, end: str):
    """Enrolled only in 北京 and there terminated (no move recorded) or dead: a 河北 bind and diagnosis
    of them answer MEMBER_NOT_INSURED (原因一), not CROSS_PROVINCE pointing to a 医保钱包 transfer to a
    province that does not insure them."""
    helper = enroll(national.reg("13"))
    member = enroll(national.reg("11"), itype=cpb.INSURANCE_TYPE_RESIDENT, region="110000", birth="19550101")
    if end == "TERMINATED":
        status(national, "11", member, cpb.PERSON_STATUS_TERMINATED)
    else:
        national.reg("11").RecordDeath(rpb.RecordDeathRequest(
            request_id=rid("death"), id_number=member, heir_id_number=helper, date_of_death="20261121"))
    assert rdb.hget(f"dir:{{psn:{member}}}", "status") == end.encode()
    exc = _bind_in_hebei(national, helper, member)
    assert (exc.code(), reason(exc)) == (grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_NOT_INSURED"), exc.details()
    found = national.reg("13").Diagnose(rpb.DiagnoseRequest(member_id_number=member, helper_id_number=helper))
    assert "CROSS_PROVINCE" not in [f.code for f in found.findings]
