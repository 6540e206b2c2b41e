"""Typed configuration from environment variables, overridable by command-line flags.

Every service declares its options as `Option(name, default, help)`; the value type comes from the
default (`0` an integer, `False` a boolean, `""` text) or from an explicit `Kind` (`PORT`, `CLOCK`,
`choice(…)`). `parse()` reads, in this order of precedence, the flag `--<name>`, the environment
variable `MEDAID_<NAME>`, for a secret also the file named by `MEDAID_<NAME>_FILE` (or
`--<name>-file`), then the default, and validates every value at start (pydantic-settings). A bad
value stops the process with exit status 2 and one line per bad option naming the flag, the
variable, the value and what is accepted; never a traceback, never a silently wrong setting.

`python -m medaid.common.config docs/configuration.md` writes the option tables of that page from
these declarations (`--check` only compares; tests/test_config.py runs it).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "MEDAID_"
EXIT_BAD_CONFIG = 2  # as argparse's usage errors

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True)
class Kind:
    """A value type: the annotation pydantic validates against, and the words the docs and errors use."""

    name: str
    annotation: Any
    accepted: str


def _strict_bool(value: Any) -> Any:
    # pydantic's own bool also takes 't', 'y', 'f', 'n': closer to a typo than to a decision.
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("not a boolean")


def _checked(check: Callable[[str], object]) -> Callable[[str], str]:
    def validate(value: str) -> str:
        if value:  # empty: "not set", which each option's own default or `required` decides
            check(value)
        return value
    return validate


def _address(value: str) -> None:
    from medaid.common import rpc  # rpc → tls → config: imported when a value is checked

    rpc.target(value)


def _registries(value: str) -> None:
    from medaid.registry.client import parse_addresses  # the option's one parser, imported when checked

    parse_addresses(value)


def _clock(value: str) -> None:
    from medaid.common import clock

    clock.from_spec(value)


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")


def _redis_url(value: str) -> None:
    if not value.startswith(_REDIS_SCHEMES):
        raise ValueError("unknown scheme")
    from medaid.common import redis_client  # redis_client → config: imported when a value is checked

    redis_client.check_url(value)


def _wait_replicas(value: str) -> None:
    from medaid.common import replica_wait  # imported when a value is checked (redis, as redis_client)

    replica_wait.parse_replica_wait(value)


def _networks(value: str) -> None:
    import ipaddress

    for item in value.split(","):
        ipaddress.ip_network(item.strip(), strict=False)  # ValueError: not an address or CIDR


def _pattern(regex: str) -> Callable[[str], None]:
    compiled = re.compile(regex)

    def check(value: str) -> None:
        if not compiled.fullmatch(value):
            raise ValueError("does not match")
    return check


def _http_url(value: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(value)  # ValueError: a broken [IPv6] host
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http:// or https:// URL with a host")
    _ = parts.port  # ValueError: a port that is no number or out of range


def _metrics_port(value: str) -> None:
    from medaid.common import metrics  # metrics → config: imported when a value is checked

    metrics.port_of(value)


def integer(ge: int = 0, le: int | None = None) -> Kind:
    accepted = f"an integer ≥ {ge}" if le is None else f"an integer from {ge} to {le}"
    return Kind("integer", Annotated[int, Field(ge=ge, le=le)], accepted)


def number(ge: float = 0) -> Kind:
    return Kind("number", Annotated[float, Field(ge=ge, allow_inf_nan=False)], f"a number ≥ {ge:g}")


def choice(*values: str, case: Literal["lower", "upper", "exact"] = "exact") -> Kind:
    def normalize(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = value.strip()
        return value.lower() if case == "lower" else value.upper() if case == "upper" else value
    return Kind("choice", Annotated[Literal[values], BeforeValidator(normalize)], "one of " + ", ".join(values))


def text_kind(name: str, check: Callable[[str], object], accepted: str) -> Kind:
    """Text checked at start by `check` (a ValueError refuses it); empty text is always accepted."""
    return Kind(name, Annotated[str, AfterValidator(_checked(check))], accepted)


BOOL = Kind("boolean", Annotated[bool, BeforeValidator(_strict_bool)], "true/false, 1/0, yes/no, on/off")
TEXT = Kind("text", str, "any text")
INT = integer()
FLOAT = number()
PORT = integer(0, 65535)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LEVEL = choice(*LOG_LEVELS, case="upper")
CLOCK = text_kind("clock", _clock, "system, or start:<ISO 8601 instant>")
ADDRESS = text_kind("address", _address, "host:port, a replica list a:p|b:p, or a gRPC target (dns:///h:p)")
REGISTRIES = text_kind("registries", _registries, "<province>=<address>,… e.g. 13=h:p,11=h:p")
REDIS_URL = text_kind("url", _redis_url, "redis://, rediss://, unix:// or redis+cluster://h:p,h:p,… URL")
PATH = Kind("path", str, "a file path")
NETWORKS = text_kind("networks", _networks, "IP addresses or CIDRs, comma-separated (10.0.0.0/8,::1)")
PROVINCE = text_kind("province", _pattern(r"[0-9]{2}"), "2 digits")
ADMDVS = text_kind("admdvs", _pattern(r"[0-9]{6}"), "6 digits")
HTTP_URL = text_kind("url", _http_url, "an http:// or https:// URL")
METRICS_PORT = text_kind("port", _metrics_port, "a port 0-65535 (0: a free one), or off (a negative number too)")
WAIT_REPLICAS = text_kind("replicas", _wait_replicas, "auto, or a number of replicas (0: no WAIT)")
RATIO = Kind("number", Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)], "a number from 0 to 1")


@dataclass(frozen=True)
class Option:
    """One setting. `kind` defaults to the default's type: bool → BOOL, int → INT (≥ 0), float → FLOAT,
    str → TEXT. `secret`: never printed, and also read from the file `MEDAID_<NAME>_FILE` names.
    `required`: an empty value stops the process."""

    name: str
    default: Any
    help: str
    kind: Kind | None = None
    secret: bool = False
    required: bool = False

    @property
    def type(self) -> Kind:
        if self.kind is not None:
            return self.kind
        for t, k in ((bool, BOOL), (int, INT), (float, FLOAT), (str, TEXT)):
            if isinstance(self.default, t):
                return k
        raise TypeError(f"option {self.name}: give a kind for a default of type {type(self.default).__name__}")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class _SecretFiles(PydanticBaseSettingsSource):
    """`MEDAID_<NAME>_FILE`: a secret's value from a file (a mounted Kubernetes/Docker secret)."""

    def __init__(self, settings_cls: type[BaseSettings], paths: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.paths = paths

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, path in self.paths.items():
            try:
                out[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError([f"{name} file {path}: {exc.strerror or exc}"]) from None
        return out


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True)


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Config(Mapping[str, Any]):
    """The validated settings: `cfg["port"]` is an int, `cfg["require_sign_in"]` a bool …"""

    def __init__(self, model: BaseSettings, options: Sequence[Option]) -> None:
        self.model = model
        self.options = {o.name: o for o in options}

    def __getitem__(self, name: str) -> Any:
        if name not in self.options:
            raise KeyError(name)
        return getattr(self.model, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.options)

    def __len__(self) -> int:
        return len(self.options)

    def __repr__(self) -> str:
        shown = {k: "***" if o.secret and self[k] else self[k] for k, o in self.options.items()}
        return f"Config({shown})"


def _field(opt: Option) -> tuple[Any, Any]:
    annotation = opt.type.annotation
    if opt.required:
        annotation = Annotated[annotation, Field(min_length=1)]
    return annotation, Field(default=opt.default)


def _settings_class(service: str, options: Sequence[Option], secret_paths: Mapping[str, str]) -> type[BaseSettings]:
    model: type[BaseSettings] = create_model(  # type: ignore[call-overload]
        f"{service.title()}Settings", __base__=_Base, **{o.name: _field(o) for o in options})

    def sources(cls: type[BaseSettings], settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _SecretFiles(settings_cls, secret_paths)

    model.settings_customise_sources = classmethod(sources)  # type: ignore[method-assign,assignment]
    return model


def _describe(opt: Option, error: Mapping[str, Any]) -> str:
    where = f"{opt.flag} ({opt.env})"
    if error["type"] == "missing" or (opt.required and error.get("input") == ""):
        return f"{where} is required: {opt.type.accepted}"
    value = "(hidden)" if opt.secret else repr(error.get("input"))
    # Our own checks say what is wrong with the value; pydantic's words only repeat `accepted`.
    why = ": " + str(error["msg"]).removeprefix("Value error, ") if error["type"] == "value_error" else ""
    line = f"{where} = {value} is not valid{why}; accepted: {opt.type.accepted}"
    password = _url_password(error.get("input")) if opt.type.name == "url" else ""
    return line.replace(f":{password}@", ":***@") if password else line


def _url_password(url: Any) -> str:
    """The password a URL's userinfo holds (`redis://user:PASSWORD@host…`), '' if none: the line that
    refuses the URL goes to the process's log, and writes it `***`."""
    if not isinstance(url, str):
        return ""
    netloc = re.split(r"[/?#]", url.partition("://")[2], maxsplit=1)[0]
    userinfo = netloc.rpartition("@")[0]
    return userinfo.partition(":")[2]


def load(service: str, options: Sequence[Option], argv: Sequence[str] | None = None) -> Config:
    """Parse and validate; raises ConfigError listing every bad option (argparse's own errors exit 2)."""
    env = os.environ
    parser = argparse.ArgumentParser(prog=f"medaid-{service}")
    for opt in options:
        default = "(hidden)" if opt.secret and opt.default else repr(opt.default)
        text = f"{opt.help} [{opt.type.accepted}] (env {opt.env}, default {default})"
        parser.add_argument(opt.flag, dest=opt.name, default=argparse.SUPPRESS, metavar=opt.type.name.upper(),
                            help=text.replace("%", "%%"))  # argparse formats help with %
        if opt.secret:
            parser.add_argument(opt.flag + "-file", dest=opt.name + "__file", default=argparse.SUPPRESS,
                                metavar="PATH", help=f"read {opt.flag} from this file (env {opt.env}_FILE)")
    given = vars(parser.parse_args(argv))
    secret_paths: dict[str, str] = {}
    problems: list[str] = []
    for opt in options:
        if not opt.secret:
            continue
        path = given.pop(opt.name + "__file", "") or env.get(opt.env + "_FILE", "")
        if path and (opt.name in given or env.get(opt.env)):
            problems.append(f"{opt.flag} ({opt.env}) and {opt.flag}-file ({opt.env}_FILE) are both set: give one")
        elif path:
            secret_paths[opt.name] = path
    if problems:
        raise ConfigError(problems)
    cls = _settings_class(service, options, secret_paths)
    by_name = {o.name: o for o in options}
    try:
        model = cls(**given)
    except ValidationError as exc:
        raise ConfigError([_describe(by_name[str(e["loc"][0])], e) for e in exc.errors()]) from None
    return Config(model, options)


# The service a bad setting is reported for: `medaid-<service>` once `parse` has run; None in a
# program that reads no service configuration (the CLI), which words the problem itself.
_program: str | None = None


def as_tool() -> None:
    """This process is a tool (the CLI), not a service: an `Unusable` setting is said by the tool, in
    its own words, not announced as a service's."""
    global _program
    _program = None


def parse(service: str, options: Sequence[Option], argv: Sequence[str] | None = None) -> Config:
    """`load`, but a bad value ends the process: one line per problem on stderr, exit status 2."""
    global _program
    _program = f"medaid-{service}"
    try:
        return load(service, options, argv)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"medaid-{service}: invalid configuration: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG) from None


def fail(service: str, problem: str) -> SystemExit:
    """A setting that is well formed but unusable with the others: the same words and exit status."""
    print(f"medaid-{service}: invalid configuration: {problem}", file=sys.stderr)
    return SystemExit(EXIT_BAD_CONFIG)


class Unusable(SystemExit):
    """Settings each well formed but unusable as given (a certificate without its key, a password file
    that cannot be read), found where they are used: the process stops as for a bad value, with the
    line `<program>: invalid configuration: <problem>` on stderr (written when raised, in a service:
    once `parse` has run) and exit status 2. `str()` of it is the problem, for a program that is no
    service (the CLI) to say in its own words."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.code = EXIT_BAD_CONFIG
        if _program is not None:
            print(f"{_program}: invalid configuration: {problem}", file=sys.stderr)



def cannot_listen(names: Sequence[str], host: str, port: int, exc: BaseException) -> Unusable:
    """A listen address that cannot be had (a host that is no address of this machine, a port another
    process holds), named by the options `names` that gave it; the OS's or gRPC's words are kept
    (`Address already in use`: a supervisor choosing ports looks for them)."""
    flags = ", ".join("--" + n.replace("_", "-") for n in names)
    envs = ", ".join(ENV_PREFIX + n.upper() for n in names)
    return Unusable(f"{flags} ({envs}) {host}:{port}: cannot listen there: {exc}")

COMMON_OPTIONS = (
    Option("host", "127.0.0.1", "address to listen on", required=True),
    Option("port", 0, "port to listen on; 0 picks a free one and prints it", PORT),
    Option("redis_url", "redis://127.0.0.1:6379/0", "Redis holding this service's state", REDIS_URL, required=True),
    Option("redis_username", "", "ACL user the service signs in to Redis as (empty: the default user)"),
    Option("redis_password_file", "", "file holding the Redis password (requirepass, or the ACL user's); "
           "empty: none, or the one in redis_url", PATH),
    Option("redis_timeout_ms", 2000, "a Redis command not answered within this, or within what the caller's "
           "deadline leaves if that is less, fails, and the call answers UNAVAILABLE (STORE_UNAVAILABLE); "
           "keep it below the callers' deadlines. Never unlimited: the recovery and maintenance loops and "
           "callers without a deadline would wait for a hung Redis for ever", integer(1)),
    Option("redis_wait_replicas", "auto", "on a Redis Cluster, how many replicas must confirm each write (WAIT) "
           "before the call goes on; a write not confirmed in time answers UNAVAILABLE (STORE_UNAVAILABLE). "
           "auto: 1 if the cluster has replicas when the service starts, else 0 (no WAIT); a single Redis "
           "ignores it", WAIT_REPLICAS),
    Option("redis_wait_timeout_ms", 1000, "how long a write waits for redis_wait_replicas confirmations; keep "
           "it below redis_timeout_ms", integer(1)),
    Option("log_level", "INFO", "log level", LOG_LEVEL),
    Option("grace_s", 5.0, "seconds in-flight calls get on SIGTERM"),
    Option("store_check_ms", 500, "how often the service pings its Redis: its grpc.health.v1 status is "
           "NOT_SERVING while Redis does not answer (0: never)"),
    Option("store_check_timeout_ms", 500, "a Redis ping slower than this counts as Redis down", integer(1)),
    Option("metrics_port", "0", "port of the Prometheus /metrics endpoint; 0 picks a free one and prints it "
           "(metrics_port in the listening line); off: no endpoint and no metrics recorded", METRICS_PORT),
    Option("metrics_host", "", "address the /metrics endpoint listens on (empty: --host)"),
    Option("trace_sample_ratio", 0.0, "share (0..1) of traces started here that are sampled for OTLP export",
           RATIO),
    Option("otlp_endpoint", "", "OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces (empty: no "
           "export; needs the `otel` extra)", HTTP_URL),
)
