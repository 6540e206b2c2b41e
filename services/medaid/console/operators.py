"""Operators of the console: a TOML list with scrypt password hashes, and signed session cookies.

    [operators.wang01]
    name = "王晓"                 # shown on the pages (masked in logs)
    role = "console"              # a role of medaid.common.authz: what the services let it do
    provinces = ["13"]            # whom it serves: people insured in these provinces (provinces_served)
    password = "scrypt$16384$8$1$<salt hex>$<hash hex>"

`python -m medaid.console.operators hash` reads a password (twice, not echoed) and prints the
`password = …` value. The file holds no clear password; the console never logs one.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import ipaddress
import json
import secrets
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medaid.common import authz
from medaid.common.names_zh import PROVINCE_ZH

# scrypt's cost: about 50 ms and 16 MiB per sign-in on one core (RFC 7914's interactive setting).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
_DKLEN = 32
SESSION_TTL_S = 8 * 3600  # one working day at the counter
# An operator's role: a client role of medaid.common.authz but `bench`, the load harness's identity (it
# seeds people and acts for any institution; never issued in production, never a person at the counter).
ROLES = authz.CLIENT_ROLES - {"bench"}


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_DKLEN)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = bytes.fromhex(digest)
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected), maxmem=256 * 1024 * 1024)
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


# Compared against when the operator id is unknown, so a wrong id costs as long as a wrong password.
_DUMMY = hash_password(secrets.token_hex(8))


@dataclass(frozen=True)
class Operator:
    operator_id: str
    name: str
    role: str
    password_hash: str
    # The provinces whose insured people this operator serves (2-digit codes); None: not set in the
    # file, and `provinces_served` decides.
    provinces: frozenset[str] | None = None


class OperatorError(ValueError):
    pass


def load(path: str | Path) -> dict[str, Operator]:
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    return parse(data.get("operators", {}))


def parse_provinces(op_id: str, value: object) -> frozenset[str]:
    """`provinces = ["13", "110000"]` → {"13", "11"}: each a province's 2-digit code or its 6-digit
    admdvs (GB/T 2260, ending 0000); a 统筹区 (130100) is not a province, and an empty list serves nobody."""
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise OperatorError(f"operator {op_id}: provinces must be a list of province codes, e.g. [\"13\", \"110000\"]")
    out = set()
    for code in value:
        province = code[:2] if len(code) == 6 and code.endswith("0000") else code
        if province not in PROVINCE_ZH:
            raise OperatorError(f"operator {op_id}: provinces: {code!r} is not a province's code (2 digits, as 13, "
                                "or its 6-digit admdvs, as 130000)")
        out.add(province)
    return frozenset(out)


def provinces_served(op: Operator, console_provinces: Iterable[str]) -> frozenset[str]:
    """Whose business an operator may do, and whose personal data they may read: people insured in
    these provinces. An operator without `provinces` in the file serves the console's own province when
    its registries are one province's (a console in front of one province, where nothing changes);
    in front of several, nobody until it is set (the console warns at startup, and each page says so):
    the hall's province cannot be guessed from the registries it reaches."""
    if op.provinces is not None:
        return op.provinces
    own = frozenset(console_provinces)
    return own if len(own) == 1 else frozenset()


def parse(table: Mapping[str, Mapping[str, object]]) -> dict[str, Operator]:
    out: dict[str, Operator] = {}
    for op_id, row in table.items():
        role = str(row.get("role", "console"))
        if role not in ROLES:
            why = " (the load harness's identity, never an operator at the counter)" if role == "bench" else ""
            raise OperatorError(f"operator {op_id}: role {role!r} is not one of {sorted(ROLES)}{why}")
        stored = str(row.get("password", ""))
        if not stored.startswith("scrypt$"):
            raise OperatorError(f"operator {op_id}: password must be a scrypt hash (python -m medaid.console.operators "
                                "hash)")
        provinces = parse_provinces(op_id, row["provinces"]) if "provinces" in row else None
        out[op_id] = Operator(op_id, str(row.get("name", op_id)), role, stored, provinces)
    if not out:
        raise OperatorError("no operators configured")
    return out


def authenticate(operators: Mapping[str, Operator], operator_id: str, password: str) -> Operator | None:
    op = operators.get(operator_id)
    ok = verify_password(password, op.password_hash if op else _DUMMY)
    return op if ok and op is not None else None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(text: str) -> tuple[Network, ...]:
    """'10.0.0.0/8, 192.168.1.5' → networks (configuration is checked before: see config.NETWORKS)."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in text.split(",") if item.strip())


def client_address(peer: str, forwarded_for: str, proxies: tuple[Network, ...]) -> str:
    """Whose sign-in this is: the peer, unless the peer is a trusted proxy; then the right-most
    X-Forwarded-For entry that is not a trusted proxy (entries further left are the client's own
    claims, anyone can write them)."""
    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in proxies)

    if not proxies or not trusted(peer):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not trusted(hop):
            return hop
    return peer


MAX_FAILURES = 5  # wrong passwords in a row, per operator id and per client address …
LOCKOUT_MS = 15 * 60_000  # … before sign-in is refused for this long after the last one
_TRACKED = 10_000  # keys remembered at most (the oldest are forgotten first)


@dataclass
class SignInThrottle:
    """Slows password guessing: after MAX_FAILURES failed sign-ins in a row for one operator id, or from
    one client address, that key may not sign in (even with the right password) until LOCKOUT_MS after
    its last failure. A success clears its operator id and address. Kept in the process: each console
    replica counts its own attempts (the load balancer's stickiness, if any, decides how many a guesser
    gets in all)."""

    failures: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (count, last failure ms)

    def locked(self, keys: tuple[str, ...], now_ms: int) -> int:
        """Milliseconds until these keys may try again (0: they may now)."""
        wait = 0
        for key in keys:
            count, last = self.failures.get(key, (0, 0))
            if count >= MAX_FAILURES:
                wait = max(wait, last + LOCKOUT_MS - now_ms)
        return max(wait, 0)

    def failed(self, keys: tuple[str, ...], now_ms: int) -> None:
        for key in keys:
            count, last = self.failures.pop(key, (0, 0))
            fresh = now_ms - last >= LOCKOUT_MS  # a failure long after the last starts a new count
            self.failures[key] = (1 if fresh else count + 1, now_ms)
        while len(self.failures) > _TRACKED:
            del self.failures[next(iter(self.failures))]

    def succeeded(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            self.failures.pop(key, None)


def write_file(path: str | Path, operators: Mapping[str, tuple[str, str, str]],
               provinces: Mapping[str, Sequence[str]] | None = None) -> None:
    """operator id → (name, role, clear password), and operator id → the provinces they serve (none
    named: the line is left out): a configuration file (development and tests)."""
    lines = []
    for op_id, (name, role, password) in operators.items():
        lines += [f"[operators.{op_id}]", f"name = {json.dumps(name, ensure_ascii=False)}", f'role = "{role}"']
        if provinces is not None and op_id in provinces:
            lines.append(f"provinces = {json.dumps(list(provinces[op_id]))}")
        lines += [f'password = "{hash_password(password)}"', ""]
    Path(path).write_text("\n".join(lines), encoding="utf-8")


# --- sessions: an HMAC-signed cookie, so console replicas sharing the secret share sessions -------

@dataclass(frozen=True)
class Session:
    operator_id: str
    nonce: str  # per sign-in; the CSRF token derives from it
    expires: int
    stamp: str = ""  # of the password it was signed in with (`password_stamp`): a changed one ends it

    def csrf(self, secret: bytes) -> str:
        return hmac.new(secret, f"csrf:{self.nonce}".encode(), hashlib.sha256).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def password_stamp(secret: bytes, password_hash: str) -> str:
    """What a session keeps of the password it was signed in with: a password changed in the file (one
    that leaked) ends every session signed in with the old one, an intruder's too, at its next request.
    Keyed by the session secret, so the cookie tells nothing of the hash."""
    return hmac.new(secret, f"password:{password_hash}".encode(), hashlib.sha256).hexdigest()[:32]


def issue(secret: bytes, operator_id: str, now: float | None = None, *,
          password_hash: str = "") -> tuple[Session, str]:
    session = Session(operator_id, secrets.token_hex(16), int((now or time.time()) + SESSION_TTL_S),
                      password_stamp(secret, password_hash))
    body = _b64(json.dumps({"o": session.operator_id, "n": session.nonce, "e": session.expires,
                            "s": session.stamp}).encode())
    sig = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    return session, f"{body}.{sig}"


def read(secret: bytes, cookie: str, now: float | None = None) -> Session | None:
    body, _, sig = cookie.partition(".")
    if not body or not sig:
        return None
    good = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(good, sig):
        return None
    try:
        d = json.loads(_unb64(body))
        session = Session(str(d["o"]), str(d["n"]), int(d["e"]), str(d.get("s", "")))
    except (ValueError, KeyError, TypeError):
        return None
    return session if session.expires > (now or time.time()) else None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["hash"]:
        print("usage: python -m medaid.console.operators hash   (reads the password, prints its scrypt hash)",
              file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        first, second = getpass.getpass("密码: "), getpass.getpass("再输入一次: ")
        if first != second:
            print("两次输入的密码不一致", file=sys.stderr)
            return 1
    else:
        first = sys.stdin.readline().rstrip("\n")
    if len(first) < 8:
        print("密码至少8位", file=sys.stderr)
        return 1
    print(hash_password(first))
    return 0


if __name__ == "__main__":
    sys.exit(main())
