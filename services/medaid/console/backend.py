"""The console's calls to the services over gRPC, on behalf of a signed-in operator.

Before each call the operator's role is checked against `medaid.common.authz.POLICIES`, the table
the services enforce for their own callers; with TLS on, the services check the console's own
certificate (identity `console`) against the same table again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import redis.exceptions
from grpc_health.v1 import health_pb2

from medaid.common import authz, rpc
from medaid.common.errors import NO_ANSWER_CODES, RESEND_CODES, error_info
from medaid.common.v1 import common_pb2 as cpb
from medaid.console.rules import pick_record
from medaid.directory import Directory
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc

log = logging.getLogger("medaid.console")
T = TypeVar("T")

REGISTRY_SERVICE = rpb.DESCRIPTOR.services_by_name["RegistryService"].full_name
WALLET_SERVICE = wpb.DESCRIPTOR.services_by_name["WalletService"].full_name


@dataclass
class Refusal(Exception):
    """A service (or the console's own check) said no: the reason code decides the message and field."""

    reason: str
    message: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retryable: bool = False

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def refusal_of(exc: grpc.RpcError, unavailable: str = "REGISTRY_UNAVAILABLE") -> Refusal:
    """The refusal a failed call carries; a call that got no answer (no ErrorInfo) is `unavailable`,
    the reason naming the service that did not answer, one answered without ErrorInfo DOWNSTREAM_ERROR.
    Retryable after errors.RESEND_CODES (an unknown outcome, errors.OUTCOME_UNKNOWN: a failure inside the
    service, UNKNOWN or INTERNAL, as much as no answer; or "not now"), so that the form keeps its request
    id (web.refuse)."""
    info = error_info(exc)
    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
    retryable = code in RESEND_CODES
    if info is None:
        reason = unavailable if code in NO_ANSWER_CODES else "DOWNSTREAM_ERROR"
        return Refusal(reason, str(exc.details()) if isinstance(exc, grpc.aio.AioRpcError) else "", {}, retryable)
    return Refusal(info.reason, str(exc.details()) if isinstance(exc, grpc.aio.AioRpcError) else "",
                   dict(info.metadata), retryable)


@dataclass(frozen=True)
class Located:
    province: str
    person: rpb.Person


class Backend:
    def __init__(self, registries: Mapping[str, str], wallet: str, deadline_s: float = 5.0,
                 directory: Directory | None = None) -> None:
        self.registry_addresses = dict(registries)
        self.directory = directory  # the national person directory: where a person is insured
        self.wallet_address = wallet
        self.deadline_s = deadline_s
        self._channels: list[grpc.aio.Channel] = []
        self._registries: dict[str, rpb_grpc.RegistryServiceAsyncStub] = {}
        self._wallet: wpb_grpc.WalletServiceAsyncStub | None = None

    def provinces(self) -> list[str]:
        return sorted(self.registry_addresses)

    def _registry(self, province: str) -> rpb_grpc.RegistryServiceAsyncStub:
        if province not in self.registry_addresses:
            raise Refusal("UNKNOWN_PROVINCE", province)
        if province not in self._registries:
            ch = rpc.channel(self.registry_addresses[province], [REGISTRY_SERVICE])
            self._channels.append(ch)
            self._registries[province] = rpb_grpc.RegistryServiceStub(ch)
        return self._registries[province]

    def _wallet_stub(self) -> wpb_grpc.WalletServiceAsyncStub:
        if not self.wallet_address:
            raise Refusal("WALLET_UNAVAILABLE", "no wallet address configured", retryable=True)
        if self._wallet is None:
            ch = rpc.channel(self.wallet_address, [WALLET_SERVICE])
            self._channels.append(ch)
            self._wallet = wpb_grpc.WalletServiceStub(ch)
        return self._wallet

    async def _call(self, role: str, method: str, fn: Callable[..., Awaitable[T]], request: Any,
                    unavailable: str) -> T:
        if not authz.allows(role, method):
            raise Refusal("CALLER_NOT_ALLOWED", method)
        try:
            return await fn(request, timeout=self.deadline_s)
        except grpc.aio.AioRpcError as exc:
            raise refusal_of(exc, unavailable) from None

    async def registry(self, role: str, province: str, method: str, request: Any) -> Any:
        stub = self._registry(province)
        return await self._call(role, f"/{REGISTRY_SERVICE}/{method}", getattr(stub, method), request,
                                "REGISTRY_UNAVAILABLE")

    async def wallet(self, role: str, method: str, request: Any) -> Any:
        stub = self._wallet_stub()
        return await self._call(role, f"/{WALLET_SERVICE}/{method}", getattr(stub, method), request,
                                "WALLET_UNAVAILABLE")

    async def locate(self, role: str, id_number: str) -> Located | None:
        """Where the person is insured: the registry the national person directory names, by the
        router's rule (Directory.lookup: the province that enrolled them last, with the status it
        reported since, e.g. TERMINATED with the province they moved to), so that the desk serves the
        record hospitals' bills go to. None: no registry ever enrolled them.

        Only a console run without a directory (in front of one province's registries, as in
        development) asks every registry instead and picks a record by status (rules.pick_record)."""
        if self.directory is None:
            return await self._locate_by_asking_all(role, id_number)
        try:
            found = await asyncio.wait_for(self.directory.lookup(id_number), self.deadline_s)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            log.error("directory not answering", extra={"fields": {"error": type(exc).__name__}})
            raise Refusal("STORE_UNAVAILABLE", "the person directory is not answering", retryable=True) from None
        if found is None:
            return None
        return await self._record_in(role, found[0], id_number)

    async def _record_in(self, role: str, province: str, id_number: str) -> Located | None:
        """The person's record in one province's registry; None where it has none."""
        try:
            r = await self.registry(role, province, "GetPerson", rpb.GetPersonRequest(id_number=id_number))
        except Refusal as exc:
            if exc.reason == "PERSON_NOT_FOUND":
                return None
            raise
        return Located(province, r.person)

    async def _locate_by_asking_all(self, role: str, id_number: str) -> Located | None:
        """Every registry asked (the id number's division code says where they were born, not where
        they are insured); the ACTIVE record wins (rules.pick_record). An ACTIVE record answers even
        while another province's registry does not; anything else waits for every registry (Refusal,
        retryable)."""
        return self.insured_of(*await self.records(role, id_number))

    @staticmethod
    def insured_of(found: list[Located], unanswered: Mapping[str, Refusal]) -> Located | None:
        """`locate`'s choice among the records `records` found."""
        if unanswered and not any(x.person.status == cpb.PERSON_STATUS_ACTIVE for x in found):
            raise next(iter(unanswered.values()))
        if not found:
            return None
        keys = [(x.province, cpb.PersonStatus.Name(x.person.status).removeprefix("PERSON_STATUS_"),
                 x.person.moved_to_province) for x in found]
        return found[pick_record(keys)]

    async def records(self, role: str, id_number: str) -> tuple[list[Located], dict[str, Refusal]]:
        """Every registry's record of the person, whatever its status (a province they moved from keeps
        one, TERMINATED), and the refusal of each registry that did not answer (retryable)."""
        provinces = self.provinces()
        answers = await asyncio.gather(*(self._record_in(role, p, id_number) for p in provinces),
                                       return_exceptions=True)
        for x in answers:
            if isinstance(x, BaseException) and not (isinstance(x, Refusal) and x.retryable):
                raise x
        return ([x for x in answers if isinstance(x, Located)],
                {p: x for p, x in zip(provinces, answers, strict=True) if isinstance(x, Refusal)})

    async def in_each_province(self, role: str, id_number: str, ask: Callable[[str], Awaitable[T]]
                               ) -> tuple[Located | None, list[tuple[str, T]], list[str]]:
        """`ask` of every registry that keeps a record of the person: where they are insured now
        (`locate`) first, then each province they were insured in before (one they moved from keeps
        their record, TERMINATED, and what was paid there: settlements, consumption records, 代缴).
        Returns the person as `locate` finds them (None: no registry knows them, and nothing is asked),
        each province's answer, and the provinces that did not answer, whose part is missing (a
        refusal from the insuring province's registry, or one that is not retryable, is raised)."""
        found, unanswered = await self.records(role, id_number)
        insured = await self.locate(role, id_number)
        if insured is None:
            return None, [], []
        answers = [(insured.province, await ask(insured.province))]
        before = sorted({x.province for x in found} - {insured.province})
        missing = [p for p in unanswered if p != insured.province]
        for province, got in zip(before, await asyncio.gather(*(ask(p) for p in before), return_exceptions=True),
                                 strict=True):
            if isinstance(got, Refusal) and got.retryable:  # the others' part still answers
                missing.append(province)
            elif isinstance(got, BaseException):
                raise got
            else:
                answers.append((province, got))
        return insured, answers, sorted(missing)

    async def healthy(self) -> dict[str, bool]:
        async def check(address: str) -> bool:
            ch = rpc.plain_channel(address)
            try:
                resp = await rpc.health_check(ch)(health_pb2.HealthCheckRequest(), timeout=1.0)
                return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.aio.AioRpcError:
                return False
            finally:
                await ch.close()

        targets = {f"registry-{p}": a for p, a in self.registry_addresses.items()}
        if self.wallet_address:
            targets["wallet"] = self.wallet_address
        results = await asyncio.gather(*(check(a) for a in targets.values()))
        return dict(zip(targets, results, strict=True))

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()
