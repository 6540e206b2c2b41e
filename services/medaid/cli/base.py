"""What every CLI command shares: the connection to a running topology, amounts, times, enums."""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import redis
from pydantic_core import PydanticCustomError

from medaid.common import config, redis_client, rpc, tls
from medaid.common.clock import SHANGHAI, month_bounds
from medaid.common.idnumber import InvalidIdNumber, normalise_id_number, parse
from medaid.common.v1 import common_pb2 as cpb
from medaid.directory import Directory
from medaid.gateway.amounts import yuan as yuan  # the one formatter, re-exported for the commands
from medaid.gateway.amounts import yuan_to_fen
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

EnumValue = TypeVar("EnumValue", bound=int)
# A command answers with the service's response (printed by --json) and readable lines.
Result = tuple[Any, list[str]]
Handler = Callable[[argparse.Namespace, "Client"], Result]

DEADLINE_S = 10.0
DIRECTORY_TIMEOUT_S = 1.0  # a directory that does not answer by then is passed over for the birthplace
_FEN = re.compile(r"^([0-9]{1,15})f\Z")
MSGID_LEN = 30


class UsageError(Exception):
    pass


def parse_amount(text: str) -> int:
    """'128.50' → 12850 fen (the gateway's rule for yuan); '12850f' → 12850 fen. More than two
    decimals is an error."""
    m = _FEN.match(text.strip())
    if m:
        return int(m.group(1))
    try:
        return yuan_to_fen(text.strip())
    except PydanticCustomError:
        raise UsageError(f"amount {text!r}: use yuan with at most 2 decimals (128.50) or fen (12850f)") from None


def id_number(text: str) -> str:
    """An id number argument: a final `x` read as `X`, then checked by the registry's own rule (GB 11643,
    `idnumber.parse`), so that a bad one is refused with the registry's reason before any call."""
    value = normalise_id_number(text)
    try:
        parse(value)
    except InvalidIdNumber as exc:
        raise argparse.ArgumentTypeError(f"INVALID_ID_NUMBER: {exc}") from None
    return value


_MONTH = re.compile(r"^([0-9]{4})-?([0-9]{2})\Z")


def month(text: str) -> str:
    """A month argument, YYYY-MM (the documented form) or YYYYMM, as YYYY-MM; `wire_month` gives the
    YYYYMM the services take. Checked by the rule `records` reads a month with (clock.month_bounds)."""
    m = _MONTH.match(text.strip())
    value = f"{m.group(1)}-{m.group(2)}" if m else text
    try:
        month_bounds(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a month YYYY-MM (or YYYYMM): {text!r}") from None
    return value


def wire_month(value: str) -> str:
    """A `month` argument as the services' YYYYMM (CreditAccount.period, GetClearingReport.month)."""
    return value.replace("-", "")


def event_time(text: str) -> int:
    """When a life-cycle event happened (`status`, `move-region` --occurred-at), as the services' unix ms:
    an ISO 8601 time, with its offset (`2026-11-22T09:30:00+08:00`, `…Z`) or without one, then read as
    Beijing time (Asia/Shanghai); a date alone is its midnight there. Not before 1970."""
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time (2026-11-22T09:30:00+08:00): {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=SHANGHAI)
    ms = int(t.timestamp() * 1000)
    if ms <= 0:
        raise argparse.ArgumentTypeError(f"an event time after 1970-01-01T00:00:00Z: {text!r}")
    return ms


def shanghai_now() -> dt.datetime:
    return dt.datetime.now(SHANGHAI)


def _drawn(length: int) -> str:
    """`length` random base32 characters (A-Z 2-7): two CLI runs never draw the same id, whatever their
    clocks say (the same tick, a clock set back), and no run of digits in it reads as an id number."""
    return base64.b32encode(secrets.token_bytes(length)).decode("ascii")[:length]


def new_msgid(fixmedins: str) -> str:
    """fixmedins_code (12) + 18 random characters: 90 bits, where the documented shape's 4-digit
    sequence after the time would repeat across processes started in the same second or a clock set
    back (the router answers a reused msgid with the first answer, or refuses it). Any 30 characters
    of [0-9A-Za-z] are a msgid (medaid.common.msgid)."""
    return fixmedins + _drawn(max(MSGID_LEN - len(fixmedins), 0))


def shanghai_time(unix_ms: int) -> str:
    """A service timestamp as Beijing time, the way the national platform writes it."""
    if not unix_ms:
        return "-"
    return dt.datetime.fromtimestamp(unix_ms / 1000, SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def names_of(enum_type: _EnumTypeWrapper[Any], prefix: str) -> list[str]:
    return [n.removeprefix(prefix) for n in enum_type.keys() if not n.endswith("UNSPECIFIED")]


def enum_value(enum_type: _EnumTypeWrapper[EnumValue], prefix: str, name: str) -> EnumValue:
    try:
        return enum_type.Value(prefix + name.upper())
    except ValueError:
        raise UsageError(f"{name!r} is not one of {', '.join(names_of(enum_type, prefix))}") from None


def enum_name(enum_type: _EnumTypeWrapper[Any], prefix: str, value: int) -> str:
    return str(enum_type.Name(value)).removeprefix(prefix)


RELATIONS = names_of(cpb.Relation, "RELATION_")
CATEGORIES = names_of(cpb.Category, "CATEGORY_")
INSURANCE_TYPES = names_of(cpb.InsuranceType, "INSURANCE_TYPE_")
STATUSES = names_of(cpb.PersonStatus, "PERSON_STATUS_")


def relation(value: int) -> str:
    return enum_name(cpb.Relation, "RELATION_", value)


def face(attestation: str) -> cpb.Verification:
    return cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE, attestation_id=attestation)


def request_id(args: argparse.Namespace) -> str:
    """--request-id, else a new one, kept in `args` so that a call without an answer can name it."""
    if not args.request_id:
        # The time for a reader; the drawn part (80 bits) for uniqueness, as in `new_msgid`.
        args.request_id = f"cli-{args.command}-{shanghai_now():%Y%m%d%H%M%S}-{_drawn(16).lower()}"
    return str(args.request_id)


def province_of(args: argparse.Namespace, id_number: str, client: Client) -> str:
    """The registry to ask about a person: --province; else the province the national person directory
    names (where the router sends the person's bills); else, with no directory configured or answering,
    or a person no registry enrolled, the province of the id number's division code (the birthplace).
    A province other than the birthplace is said in the output."""
    given = getattr(args, "province", None)
    if given:
        return str(given)
    birthplace = id_number[:2]
    found = client.directory_province(id_number)
    if found and found != birthplace:
        client.notes.append(f"asked registry {found}, where the person directory says {id_number} is insured "
                            f"(the id number's birthplace is {birthplace})")
    return found or birthplace


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        """What the caller gave that cannot be used (a topology file, an address, a certificate folder)
        is a UsageError, said before any call."""
        addresses: dict[str, str] = {}
        state: dict[str, Any] = {}
        if Path(args.topology).exists():
            try:
                state = dict(json.loads(Path(args.topology).read_text()))
                addresses = dict(state.get("addresses", {}))
            except (OSError, ValueError, TypeError, AttributeError) as exc:  # not the file `make up` writes
                raise UsageError(f"topology file {args.topology}: {exc}") from None
        if args.router:
            addresses["router"] = args.router
        if args.wallet:
            addresses["wallet"] = args.wallet
        for item in args.registry or []:
            prov, _, addr = item.partition("=")
            if not prov or not addr:
                raise UsageError(f"--registry {item!r}: want PROVINCE=HOST:PORT")
            addresses[f"registry-{prov}"] = addr
        self.addresses = addresses
        # The national person directory (medaid.directory) lives in the services' Redis: --directory, else
        # the one `make up` wrote in the topology file.
        self.directory_url = str(args.directory or state.get("redis_url") or "")
        self.notes: list[str] = []  # what the output says beside the answer (the registry asked, and why)
        self._channels: list[grpc.Channel] = []
        # mTLS as `identity` (default operator) when a certificate folder is given (--tls-dir / MEDAID_TLS_DIR)
        try:
            self.tls = tls.load(args.identity, tls_dir=args.tls_dir) if args.tls_dir else None
        except SystemExit as exc:  # tls.load's word for a service that cannot start; here the caller's mistake
            raise UsageError(str(exc) if isinstance(exc, config.Unusable) else str(exc.code)) from None
        self.token = args.token
        self.status = 0  # the exit status of an answer that says something is wrong (`health`: one is down)

    def _channel(self, name: str) -> grpc.Channel:
        if name not in self.addresses:
            raise UsageError(f"no address for {name}: run `make up` or pass it on the command line")
        return self.channel_to(self.addresses[name], name)

    def channel_to(self, address: str, name: str = "") -> grpc.Channel:
        """A channel to `address` (TLS as every call's), closed with the client."""
        try:
            ch = rpc.sync_channel(address, tls=self.tls)
        except ValueError as exc:  # not host:port (rpc.target's rule)
            raise UsageError(f"address of {name or address}: {exc}") from None
        self._channels.append(ch)
        return ch

    def directory_province(self, id_number: str) -> str:
        """The province the national person directory names for the person, by the rule the router
        routes by (`Directory.lookup`); "" when none is configured, it does not answer (said in
        `notes`), or no registry ever enrolled the person."""
        if not self.directory_url:
            return ""

        async def lookup() -> tuple[str, str, str] | None:
            store = redis_client.client(self.directory_url, 1, timeout_s=DIRECTORY_TIMEOUT_S)
            try:
                return await Directory(store).lookup(id_number)
            finally:
                await store.aclose()

        try:
            found = asyncio.run(lookup())
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError, ValueError) as exc:
            self.notes.append(f"person directory not reachable ({type(exc).__name__}): asked registry "
                              f"{id_number[:2]}, the id number's birthplace")
            return ""
        return found[0] if found is not None else ""

    def router(self) -> pb_grpc.RouterServiceStub:
        ch = self._channel("router")
        if self.token:  # an institution's bearer token (docs/security.md)
            ch = grpc.intercept_channel(ch, _Bearer(self.token))
        return pb_grpc.RouterServiceStub(ch)

    def wallet(self) -> wpb_grpc.WalletServiceStub:
        return wpb_grpc.WalletServiceStub(self._channel("wallet"))

    def registry(self, province: str) -> rpb_grpc.RegistryServiceStub:
        return rpb_grpc.RegistryServiceStub(self._channel(f"registry-{province}"))

    def close(self) -> None:
        for ch in self._channels:
            ch.close()


class _Bearer(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        new = details._replace(metadata=[*(details.metadata or []), self._md])
        return continuation(new, request)
