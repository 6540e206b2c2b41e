"""The wallet's clients to the province registries: one long-lived channel per province,
deadline on every call, retries on UNAVAILABLE only (every call is idempotent)."""

from __future__ import annotations

import grpc

from medaid.common import errors, rpc
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc

SERVICE = rpb.DESCRIPTOR.services_by_name["RegistryService"].full_name


def parse_addresses(spec: str) -> dict[str, str]:
    """'13=127.0.0.1:5001,11=127.0.0.1:5002' -> {'13': '127.0.0.1:5001', …}

    A province served by several replicas lists them with '|' (13=10.0.0.5:7001|10.0.0.6:7001);
    a DNS name or gRPC target URI (13=dns:///registry-13:7000) is taken as it is (see common/rpc.py)."""
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        prov, _, addr = item.partition("=")
        if len(prov) != 2 or not prov.isdigit() or not addr:
            raise ValueError(f"bad registry address {item!r}: want <province>=<host:port>[|<host:port>…]")
        rpc.target(addr)  # a malformed replica list fails at start, not at the first call
        out[prov] = addr
    return out


class Registries:
    def __init__(self, addresses: dict[str, str], deadline_s: float = rpc.DEFAULT_DEADLINE_S) -> None:
        self.addresses = dict(addresses)
        self.deadline_s = deadline_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, rpb_grpc.RegistryServiceStub] = {}

    def provinces(self) -> list[str]:
        return sorted(self.addresses)

    def stub(self, province: str) -> rpb_grpc.RegistryServiceStub:
        if province not in self.addresses:
            raise errors.invalid("UNKNOWN_PROVINCE", f"no registry is configured for province {province}",
                                 province=province)
        if province not in self._stubs:
            ch = rpc.channel(self.addresses[province], [SERVICE])
            self._channels[province] = ch
            self._stubs[province] = rpb_grpc.RegistryServiceStub(ch)
        return self._stubs[province]

    async def person(self, province: str, id_number: str) -> rpb.Person | None:
        try:
            resp = await self.stub(province).GetPerson(rpb.GetPersonRequest(id_number=id_number),
                                                       timeout=self.deadline_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise downstream(exc, province) from None
        return resp.person

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()


def downstream(exc: grpc.aio.AioRpcError, province: str) -> errors.DomainError:
    """A registry call that failed for a reason other than a rule: UNAVAILABLE for the caller."""
    return errors.unavailable("REGISTRY_UNAVAILABLE",
                              f"the registry of province {province} did not answer ({exc.code().name}); "
                              "retry with the same request id", province=province)
