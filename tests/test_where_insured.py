"""Where a person is insured has one answer: the national person directory's (medaid.directory, the
router's rule for every 1101 and 2207). The front-desk console used to ask every registry and pick a
record by status alone, and so served another province's record than the one hospitals' bills go to
for a person with records in several provinces (SPEC §5b: moving province leaves the old record
TERMINATED with the new province noted).

A real topology (redis-server, registries 13, 11 and 62, the wallet, the router, the console), the
router asked over gRPC and the console over HTTP, for the same people."""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import pytest
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.v1 import router_pb2 as rtpb
from medaid.router.v1 import router_pb2_grpc as rtpb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from support import new_id, rid
from test_gateway import HOSPITAL, new_msgid
from test_log_lines import Desk

TERMINATED = cpb.PERSON_STATUS_TERMINATED


class Env:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.channels = [grpc.insecure_channel(topo.address(n)) for n in ("registry-13", "registry-11", "registry-62",
                                                                         "router")]
        self.reg = {p: rpb_grpc.RegistryServiceStub(ch) for p, ch in zip(("13", "11", "62"), self.channels[:3],
                                                                                     strict=True)}
        self.router = rtpb_grpc.RouterServiceStub(self.channels[3])

    def close(self) -> None:
        for ch in self.channels:
            ch.close()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    topo = Topology.start(provinces=("13", "11", "62"), clock=DEMO_CLOCK, gateway=False, console=True)
    e = Env(topo)
    try:
        yield e
    finally:
        e.close()
        topo.stop()


def enrol(env: Env, province: str, pid: str, region: str) -> None:
    env.reg[province].EnrollPerson(rpb.EnrollPersonRequest(
        request_id=rid("enroll"), id_number=pid, name="张三", insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
        pooling_region=region))


def terminate(env: Env, province: str, pid: str, moved_to: str = "") -> None:
    env.reg[province].UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("st"), id_number=pid, status=TERMINATED, moved_to_province=moved_to))


def routed_region(env: Env, pid: str) -> str:
    """The 1101 answer's insured place: the record of the registry the router sent the 1101 to."""
    resp = env.router.QueryPerson(rtpb.QueryPersonRequest(
        msgid=new_msgid(HOSPITAL), institution=rtpb.Institution(fixmedins_code=HOSPITAL, mdtrtarea_admvs="130100"),
        mdtrt_cert_type="02", mdtrt_cert_no=pid), timeout=10)
    return str(resp.insuinfo[0].insuplc_admdvs)


def desk_region(desk: Desk, pid: str) -> tuple[str, str]:
    """The console's person page for `pid`: (its 参保统筹区, its 参保状态)."""
    status, page = desk.page("/lookup", {"csrf": desk.csrf, "id_number": pid})
    assert status == 200, page
    region = re.search(r'<dd id="region">([^<]*)</dd>', page)
    state = re.search(r'<dd id="status">([^<]*)</dd>', page)
    assert region and state, page
    return region.group(1), state.group(1)


def test_the_console_finds_a_person_where_the_router_sends_their_bills(env: Env):
    desk = Desk(env)  # type: ignore[arg-type]  # it needs only .topo
    # Insured in 甘肃 until 断保 (TERMINATED, no move), then in 河北, now moved out of 河北 to 北京,
    # which has not enrolled them yet: their record is 河北's, saying where they went.
    moving = new_id("620102", "19800101")
    enrol(env, "62", moving, "620100")
    terminate(env, "62", moving)
    enrol(env, "13", moving, "130100")
    terminate(env, "13", moving, moved_to="11")
    # Moving from 北京 to 河北: 河北 has enrolled them, 北京 has not yet recorded the move; both ACTIVE.
    arriving = new_id("110105", "19800101")
    enrol(env, "11", arriving, "110000")
    enrol(env, "13", arriving, "130100")
    for pid in (moving, arriving):
        assert routed_region(env, pid) == "130100"
    region, state = desk_region(desk, moving)
    assert "130100" in region and "已转往 北京 (11)" in state, (region, state)
    region, state = desk_region(desk, arriving)
    assert "130100" in region, (region, state)
