"""Life-cycle events across an upgrade of the registry (SPEC §5, §5b): an older registry sent the end of a
person's wallet relationships without the event's time; the upgraded one, resending it (a resend of the
event, or the recovery pass), must get the wallet's first answer, not a refusal of a reused request id.
Same fixtures and people as tests/test_wallet.py.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from medaid.bench import money
from medaid.common import errors
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from support import RESIDENT, reason, rid
from test_wallet import Env


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


def older_end(reg: Any) -> Any:
    """The wallet end as an older registry sent it (no event time), the registry then stopping before it
    recorded the wallet's answer."""
    real = reg.ctx.wallet.end_relationships

    async def end(ref: str, id_number: str, why: str, province: str, event_at: int = 0) -> int:
        await real(ref, id_number, why, province)
        raise errors.unavailable("WALLET_UNAVAILABLE", "stopped before the answer was recorded")

    return end


@pytest.mark.parametrize("event", ["TERMINATED", "MOVED_REGION", "DECEASED"])
@pytest.mark.parametrize("finisher", ["resend", "recovery"])
def test_an_end_an_older_registry_sent_without_a_time_is_finished_after_the_upgrade(
        env, national, loop_thread, event, finisher):
    son = env.person("13", bal=100_000)
    heir = env.person("13")
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    reg = national.registries["13"].registry
    if event == "TERMINATED":
        req: Any = rpb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=son,
                                                 status=cpb.PERSON_STATUS_TERMINATED)
        call = env.reg("13").UpdatePersonStatus
    elif event == "MOVED_REGION":
        req = rpb.MovePoolingRegionRequest(request_id=rid("mv"), id_number=son, pooling_region="130200")
        call = env.reg("13").MovePoolingRegion
    else:
        req = rpb.RecordDeathRequest(request_id=rid("death"), id_number=son, heir_id_number=heir,
                                     date_of_death="20261120")
        call = env.reg("13").RecordDeath
    reg.ctx.wallet.end_relationships = older_end(reg)
    try:
        with pytest.raises(grpc.RpcError) as ei:
            call(req)
        assert reason(ei.value) == "WALLET_UNAVAILABLE"
    finally:
        del reg.ctx.wallet.end_relationships
    assert env.wbal(mother) == 0  # the wallet did end it
    env.clock.advance(120_000)
    if finisher == "resend":
        resp = call(req)
        if event != "TERMINATED":
            assert resp.wallet_returned_fen == 10_000
    else:
        counts = loop_thread.run(reg.recover())
        assert (counts.lifecycle, counts.deferred) == (1, 0)
        resp = call(req)  # the pass recorded the request's answer
    if event == "DECEASED":
        assert env.bal("13", son) == 0 and resp.paid_out_fen == 100_000  # paid out to the heir
    else:
        assert env.bal("13", son) == 100_000
    assert not env.rdb.zcard(reg.ctx.k.open_settlements())
    report = money.check(env.rdb)
    assert report.conserved, report.as_dict()

