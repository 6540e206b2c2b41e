"""The wallet's clients to the province registries: one long-lived channel per province,
deadline on every call, retries on UNAVAILABLE only (every call is idempotent)."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import grpc

from medaid.common import errors, rpc
from medaid.common.batcher import Batcher, unpack_outcome
from medaid.common.errors import DomainError
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc

SERVICE = rpb.DESCRIPTOR.services_by_name["RegistryService"].full_name
Item = TypeVar("Item")
Result = TypeVar("Result")


def parse_addresses(spec: str) -> dict[str, str]:
    """'13=127.0.0.1:5001,11=127.0.0.1:5002' -> {'13': '127.0.0.1:5001', …}

    A province served by several replicas lists them with '|' (13=10.0.0.5:7001|10.0.0.6:7001);
    a DNS name or gRPC target URI (13=dns:///registry-13:7000) is taken as it is (see common/rpc.py).
    A province named twice is refused: which of the two would serve it? The one parser of the option
    `--registries`: config.REGISTRIES checks a value with it at start."""
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        prov, _, addr = item.partition("=")
        if len(prov) != 2 or not prov.isdigit() or not addr:
            raise ValueError(f"bad item {item!r}: want <province>=<host:port>[|<host:port>…]")
        if prov in out:
            raise ValueError(f"province {prov} is named twice; replicas of one province go in one item, "
                             f"separated by '|' ({prov}=<host:port>|<host:port>)")
        rpc.target(addr)  # a malformed replica list fails at start, not at the first call
        out[prov] = addr
    return out


class Registries:
    def __init__(self, addresses: dict[str, str], deadline_s: float = rpc.DEFAULT_DEADLINE_S, *,
                 wait_for_ready: bool = False) -> None:
        self.addresses = dict(addresses)
        self.deadline_s = deadline_s
        # Whether a call to a registry that is not connected waits (within its deadline) for it to
        # connect, instead of failing at once (gRPC's default): see Router.
        self.wait_for_ready = wait_for_ready
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, rpb_grpc.RegistryServiceAsyncStub] = {}
        # Person checks and transfer debits to one province share batch calls (common/batcher.py).
        self._person_batchers: dict[str, Batcher[str, rpb.Person]] = {}
        self._debit_batchers: dict[str, Batcher[rpb.DebitForTransferRequest, rpb.DebitForTransferResponse]] = {}

    def timeout(self) -> float:
        """The timeout of a single (unbatched) call: the deadline, cut to what the caller of the request
        being served still allows (rpc.budget). A batch call serves several callers: it keeps the
        whole deadline, but each caller waits for its item's answer only as long (`_submit`)."""
        return rpc.time_left(self.deadline_s)

    async def _submit(self, batcher: Batcher[Item, Result], item: Item, province: str) -> Result:
        """The answer to `item` from its batch call, waited for within `timeout()`: a registry that does
        not answer in time is REGISTRY_UNAVAILABLE before the caller of the request being served gives
        up, not its bare DEADLINE_EXCEEDED. The batch goes on for the others; what it does with this
        item is idempotent by the item's own id, so the resend (or the recovery loop) finds it."""
        try:
            async with asyncio.timeout(self.timeout()):  # not wait_for: see redis_client.ping
                return await batcher.submit(item)
        except TimeoutError:
            raise errors.unavailable("REGISTRY_UNAVAILABLE", f"the registry of province {province} did not "
                                     "answer in time; retry with the same request id", province=province) from None

    def provinces(self) -> list[str]:
        return sorted(self.addresses)

    def stub(self, province: str) -> rpb_grpc.RegistryServiceAsyncStub:
        if province not in self.addresses:
            raise errors.invalid("UNKNOWN_PROVINCE", f"no registry is configured for province {province}",
                                 province=province)
        if province not in self._stubs:
            ch = rpc.channel(self.addresses[province], [SERVICE])
            self._channels[province] = ch
            self._stubs[province] = rpb_grpc.RegistryServiceStub(ch)
        return self._stubs[province]

    async def person(self, province: str, id_number: str) -> rpb.Person | None:
        """The person as the province's registry holds them; None when not enrolled there.
        Concurrent lookups in one province travel together as one GetPersons call."""
        batcher = self._person_batchers.get(province)
        if batcher is None:
            stub = self.stub(province)

            async def send(ids: list[str]) -> list[rpb.Person | DomainError]:
                resp = await stub.GetPersons(rpb.GetPersonsRequest(id_numbers=ids), timeout=self.deadline_s,
                                             wait_for_ready=self.wait_for_ready)
                return [unpack_outcome(o, "person") for o in resp.outcomes]

            batcher = self._person_batchers[province] = Batcher(send, name="person")
        try:
            return await self._submit(batcher, id_number, province)
        except grpc.aio.AioRpcError as exc:
            raise downstream(exc, province) from None
        except DomainError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def debit_for_transfer(self, province: str,
                                 request: rpb.DebitForTransferRequest) -> rpb.DebitForTransferResponse:
        """DebitForTransfer; concurrent debits in one province travel together as one
        DebitForTransferBatch call. A refusal raises the DomainError the registry gave; a registry
        that did not answer raises grpc.aio.AioRpcError, or REGISTRY_UNAVAILABLE once the caller of
        the request being served would give up (`_submit`)."""
        batcher = self._debit_batchers.get(province)
        if batcher is None:
            stub = self.stub(province)

            async def send(items: list[rpb.DebitForTransferRequest],
                           ) -> list[rpb.DebitForTransferResponse | DomainError]:
                resp = await stub.DebitForTransferBatch(rpb.DebitForTransferBatchRequest(requests=items),
                                                        timeout=self.deadline_s, wait_for_ready=self.wait_for_ready)
                return [unpack_outcome(o) for o in resp.outcomes]

            batcher = self._debit_batchers[province] = Batcher(send, name="debit")
        return await self._submit(batcher, request, province)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()


def downstream(exc: grpc.aio.AioRpcError, province: str) -> errors.DomainError:
    """A registry call that failed for a reason other than a rule: UNAVAILABLE for the caller. A
    registry that answered UNAVAILABLE with its own reason (its store is down) is passed on as is."""
    info = errors.error_info(exc) if exc.code() == grpc.StatusCode.UNAVAILABLE else None
    if info is not None and info.reason:
        return errors.unavailable(info.reason, exc.details() or "", **dict(info.metadata))
    return errors.unavailable("REGISTRY_UNAVAILABLE",
                              f"the registry of province {province} did not answer ({exc.code().name}); "
                              "retry with the same request id", province=province)
