"""The router's wiring and routing, shared by every transaction it serves (settle.py, service.py,
undo.py, reconcile.py): the channels to the province registries and the wallet, the msgid claims and
the reconciliation index; which province a message goes to; a registry call with its failures mapped
(a refusal passed through with its google.rpc.Status, a registry that does not answer
REGISTRY_UNAVAILABLE); a 2208's insuplc_admdvs checked against the settlement and the person's record."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_status import rpc_status
from redis.asyncio.cluster import RedisCluster

from medaid.common import errors, rpc
from medaid.common import msgid as msgids
from medaid.common import validate as validate_place
from medaid.common.clock import Clock
from medaid.common.idnumber import mask
from medaid.common.logs import scrub
from medaid.common.transport import Passthrough
from medaid.directory import Directory
from medaid.registry import validate
from medaid.registry.client import Registries
from medaid.router.batcher import SettleBatcher
from medaid.router.claims import MsgidClaims
from medaid.router.index import Entry, SettlementIndex
from medaid.router.v1 import router_pb2 as pb


def validate_msgid(msgid: str) -> None:
    """Any 30 characters of [0-9A-Za-z] (medaid.common.msgid); the institution scopes it."""
    msgids.require(msgid)


def check_institution(inst: pb.Institution) -> None:
    validate.institution(inst.fixmedins_code)
    validate.admdvs(inst.mdtrtarea_admvs, "mdtrtarea_admvs", required=True)


class RouterCore:
    """What every transaction of the router stands on: its stores, channels and routing."""

    def __init__(self, directory: Directory, registries: Registries, *, wallet_address: str = "",
                 clock: Clock | None = None, deadline_s: float = rpc.DEFAULT_DEADLINE_S, batch: bool = True) -> None:
        self.directory = directory
        self.index = SettlementIndex(directory.client)
        # On one Redis the claim script also writes a 2207's index entry (index.py).
        self._cluster = isinstance(directory.client, RedisCluster)
        self.claims = MsgidClaims(directory.client, on_freed=self.index.forget, deadline_s=deadline_s)
        self.registries = registries
        # Person look-ups for the insured place travel on channels of their own: sharing one with
        # SettleBatch, round robin over a province's replicas would hand every settlement to one
        # replica and every look-up to the other.
        self._lookups = Registries(registries.addresses, deadline_s=registries.deadline_s, wait_for_ready=True)
        self.clock = clock or Clock()
        self.deadline_s = deadline_s
        self.wallet_address = wallet_address
        # 2207s to one province share SettleBatch calls (see batcher.py).
        self.batch = batch
        self._batchers: dict[str, SettleBatcher] = {}
        self._wallet_stub: Any = None
        self._wallet_channel: grpc.aio.Channel | None = None

    def _wallet(self) -> Any:
        if not self.wallet_address:
            return None
        if self._wallet_stub is None:
            from medaid.wallet.v1 import wallet_pb2, wallet_pb2_grpc

            name = wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name
            self._wallet_channel = rpc.channel(self.wallet_address, [name])
            self._wallet_stub = wallet_pb2_grpc.WalletServiceStub(self._wallet_channel)
        return self._wallet_stub

    async def close(self) -> None:
        await self.registries.close()
        await self._lookups.close()
        if self._wallet_channel is not None:
            await self._wallet_channel.close()

    # --- routing -------------------------------------------------------------------------

    async def province_of(self, psn_no: str, insuplc_admdvs: str) -> str:
        if insuplc_admdvs:
            validate.admdvs(insuplc_admdvs, "insuplc_admdvs")
            province = insuplc_admdvs[:2]
        else:
            found = await self.directory.lookup(psn_no)
            if found is None:
                raise errors.not_found("PERSON_NOT_FOUND", f"no province insures {mask(psn_no)}")
            province = found[0]
        if province not in self.registries.addresses:
            # The field is named only where the caller sent it: a province found in the national
            # directory is no field of the message to correct.
            where = {"field": "insuplc_admdvs"} if insuplc_admdvs else {}
            raise errors.invalid("UNKNOWN_INSURED_PLACE", f"no registry serves province {province}"
                                 + ("" if insuplc_admdvs else " (the person's province in the national directory)"),
                                 **where)
        return province

    async def named_elsewhere(self, exc: Exception, pid: str, given: str) -> Exception:
        """What to answer for `exc`, a registry's refusal of a message whose insuplc_admdvs `given` sent
        it there: a PERSON_NOT_FOUND for a person the national directory knows in another province is
        the caller's insuplc_admdvs contradicting where they are insured (INSURED_PLACE_MISMATCH, naming
        the place a 1101 without one answers), so the cashier corrects the field rather than taking
        the patient for uninsured; anything else is `exc`. Read only on that refusal."""
        reason = exc.reason if isinstance(exc, errors.DomainError) else \
            errors.status_reason(exc.status) if isinstance(exc, Passthrough) else ""
        if reason != "PERSON_NOT_FOUND" or not given:
            return exc
        found = await self.directory.lookup(pid)
        if found is None or found[0] == given[:2]:
            return exc
        place = await self._record_place(found[0], pid) if found[0] in self.registries.addresses else ""
        if not place:  # no record this router reaches either: nobody it serves insures them
            return exc
        try:
            validate_place.insured_place(given, place, who=mask(pid))
        except errors.DomainError as mismatch:
            return mismatch
        return exc

    async def holding_province(self, inst: str, sid: str, pid: str, insuplc_admdvs: str) -> tuple[str, Entry | None]:
        """Where a message about settlement `sid` (its 2207, resent, or its 2208) goes, and the router's
        index entry of it: the province that settled it, also once the person has moved since (a
        resent 2207 is answered there as the first time, not settled again where they are insured
        now); else the one insuring the person."""
        insuring, [entry] = await asyncio.gather(self.province_of(pid, insuplc_admdvs),
                                                 self.index.entries_of([(inst, sid)]))
        return (entry.province if entry is not None else insuring), entry

    @staticmethod
    def _registry_unavailable(province: str) -> errors.DomainError:
        return errors.unavailable("REGISTRY_UNAVAILABLE", f"the registry of province {province} is not "
                                  "answering; retry the same msgid later", province=province)

    async def _registry_call(self, province: str, method: str, request: Any, *, timeout: float | None = None) -> Any:
        """A call to a province's registry; `timeout` None: the router's deadline, cut to what the call
        being served has left (rpc.budget). It waits, within its deadline, for a registry that is not
        connected (wait_for_ready): one back from a restart is reached by the next call, where gRPC's
        default would fail every call at once until the channel's reconnect backoff, grown during the
        outage, ran out (seconds of REGISTRY_UNAVAILABLE from a registry that answers). A registry that
        stays down is REGISTRY_UNAVAILABLE at the deadline, as one that does not answer always was."""
        stub = self.registries.stub(province)
        try:
            return await getattr(stub, method)(request, timeout=rpc.time_left(self.deadline_s)
                                               if timeout is None else timeout, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                    and errors.error_info(exc) is None:
                raise self._registry_unavailable(province) from None
            status = rpc_status.from_call(exc)  # type: ignore[arg-type]  # an AioRpcError serves (see errors.py)
            if status is None:
                # gRPC's words for a failure inside may carry what the registry read (an id number): masked.
                raise errors.DomainError(exc.code(), "DOWNSTREAM_ERROR", scrub(exc.details() or "")) from None
            raise Passthrough(rpc_status.to_status(status)) from None

    async def _record_place(self, province: str, pid: str) -> str:
        """The 统筹区 of the person's record in `province`'s registry, '' when it does not enroll them."""
        try:
            async with asyncio.timeout(rpc.time_left(self.deadline_s)):
                person = await self._lookups.person(province, pid)
        except TimeoutError:
            raise self._registry_unavailable(province) from None
        return person.pooling_region if person is not None else ""

    async def _checked_reversal_place(self, pid: str, given: str, settled_place: str) -> None:
        """A 2208's, 2601's or 5203's insuplc_admdvs: empty, the settlement's own insured place, or the
        place insuring the person now, as 1101 answers it without one (a person who has moved province
        since is answered there, and 5203 and 2601 are routed there too); else INSURED_PLACE_MISMATCH,
        before anything is written or answered. Read only when the first does not agree."""
        if not given or given == settled_place:
            return
        now = await self.directory.insured_province(pid)
        current = await self._record_place(now, pid) \
            if now == given[:2] and now in self.registries.addresses else ""
        validate_place.insured_place(given, settled_place, current, who=mask(pid))
