"""Optional request signing (off unless a key is configured).

A signed request carries three headers:

    X-Medaid-Timestamp: <unix seconds>
    X-Medaid-Nonce:     <1-64 characters>
    X-Medaid-Signature: hex(HMAC(key, "<timestamp>\\n<nonce>\\n" + raw body))

with HMAC over SM3 (`hmac-sm3`, GB/T 32905, the national platform's hash) or SHA-256
(`hmac-sha256`). The timestamp must be within `skew_s` of the gateway's clock. A replayed signed
message is harmless: msgid is the idempotency key, so it gets the first answer.

SM3 comes from OpenSSL through hashlib where the build has it, else from the small pure-Python
implementation below (checked against the standard's test vectors in tests/test_gateway.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Callable, Mapping
from typing import Any

TIMESTAMP = "X-Medaid-Timestamp"
NONCE = "X-Medaid-Nonce"
SIGNATURE = "X-Medaid-Signature"
ALGORITHMS = ("hmac-sm3", "hmac-sha256")
_NONCE = re.compile(r"^[A-Za-z0-9._:\-]{1,64}\Z")
# Unix seconds in ASCII digits: `str.isdigit` also takes '²' and '１', which `int` refuses or reads,
# and a number of thousands of digits that `int` refuses (each would answer INTERNAL_ERROR).
_TIMESTAMP = re.compile(r"^[0-9]{1,12}\Z")

# --- SM3 (GB/T 32905-2016) ----------------------------------------------------------------------

_IV = (0x7380166F, 0x4914B2B9, 0x172442D7, 0xDA8A0600, 0xA96F30BC, 0x163138AA, 0xE38DEE4D, 0xB0FB0E4E)
_M32 = 0xFFFFFFFF


def _rotl(x: int, n: int) -> int:
    n %= 32
    return ((x << n) | (x >> (32 - n))) & _M32


def _p0(x: int) -> int:
    return x ^ _rotl(x, 9) ^ _rotl(x, 17)


def _p1(x: int) -> int:
    return x ^ _rotl(x, 15) ^ _rotl(x, 23)


def _compress(v: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    w = list(struct.unpack(">16I", block))
    for j in range(16, 68):
        w.append(_p1(w[j - 16] ^ w[j - 9] ^ _rotl(w[j - 3], 15)) ^ _rotl(w[j - 13], 7) ^ w[j - 6])
    w1 = [w[j] ^ w[j + 4] for j in range(64)]
    a, b, c, d, e, f, g, h = v
    for j in range(64):
        t = 0x79CC4519 if j < 16 else 0x7A879D8A
        ss1 = _rotl((_rotl(a, 12) + e + _rotl(t, j)) & _M32, 7)
        ss2 = ss1 ^ _rotl(a, 12)
        if j < 16:
            ff, gg = a ^ b ^ c, e ^ f ^ g
        else:
            ff, gg = (a & b) | (a & c) | (b & c), (e & f) | (~e & g)
        tt1 = (ff + d + ss2 + w1[j]) & _M32
        tt2 = (gg + h + ss1 + w[j]) & _M32
        a, b, c, d, e, f, g, h = tt1, a, _rotl(b, 9), c, _p0(tt2), e, _rotl(f, 19), g
    return tuple(x ^ y for x, y in zip(v, (a, b, c, d, e, f, g, h), strict=True))


class PureSM3:
    """hashlib-compatible SM3 (enough of the interface for `hmac`)."""

    name = "sm3"
    digest_size = 32
    block_size = 64

    def __init__(self, data: bytes = b"") -> None:
        self._v: tuple[int, ...] = _IV
        self._buf = b""
        self._len = 0
        self.update(data)

    def update(self, data: bytes) -> None:
        self._len += len(data)
        buf = self._buf + bytes(data)
        full = len(buf) - len(buf) % 64
        for i in range(0, full, 64):
            self._v = _compress(self._v, buf[i:i + 64])
        self._buf = buf[full:]

    def copy(self) -> PureSM3:
        other = PureSM3()
        other._v, other._buf, other._len = self._v, self._buf, self._len
        return other

    def digest(self) -> bytes:
        bits = self._len * 8
        tail = self._buf + b"\x80" + b"\x00" * ((55 - len(self._buf)) % 64) + struct.pack(">Q", bits)
        v = self._v
        for i in range(0, len(tail), 64):
            v = _compress(v, tail[i:i + 64])
        return struct.pack(">8I", *v)

    def hexdigest(self) -> str:
        return self.digest().hex()


def sm3_factory() -> Callable[..., Any]:
    try:
        hashlib.new("sm3")
        return lambda data=b"": hashlib.new("sm3", data)
    except ValueError:
        return PureSM3


def digestmod(alg: str) -> Any:
    if alg == "hmac-sm3":
        return sm3_factory()
    if alg == "hmac-sha256":
        return hashlib.sha256
    raise ValueError(f"unknown signing algorithm {alg!r}: use one of {', '.join(ALGORITHMS)}")


def signature(key: bytes, alg: str, timestamp: str, nonce: str, body: bytes) -> str:
    return hmac.new(key, f"{timestamp}\n{nonce}\n".encode() + body, digestmod(alg)).hexdigest()


class SignatureInvalid(Exception):
    pass


class Verifier:
    def __init__(self, key: str, alg: str = "hmac-sha256", skew_s: int = 300) -> None:
        digestmod(alg)  # refuse an unknown algorithm at start-up
        self.key = key.encode()
        self.alg = alg
        self.skew_s = skew_s

    def verify(self, headers: Mapping[str, str], body: bytes, now_s: int) -> None:
        ts, nonce, sig = headers.get(TIMESTAMP, ""), headers.get(NONCE, ""), headers.get(SIGNATURE, "")
        if not ts or not nonce or not sig:
            raise SignatureInvalid(f"missing {TIMESTAMP} / {NONCE} / {SIGNATURE}")
        if not _TIMESTAMP.match(ts) or abs(int(ts) - now_s) > self.skew_s:
            raise SignatureInvalid(f"{TIMESTAMP} must be unix seconds within {self.skew_s}s of the gateway's clock")
        if not _NONCE.match(nonce):
            raise SignatureInvalid(f"{NONCE} must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        expected = signature(self.key, self.alg, ts, nonce, body)
        if not hmac.compare_digest(expected, sig.lower()):
            raise SignatureInvalid(f"{SIGNATURE} does not match ({self.alg})")
