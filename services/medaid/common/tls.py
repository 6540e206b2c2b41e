"""Mutual TLS between medaid processes: a development CA and per-identity certificates
(`make certs`, `Topology.start(tls=True)`), and the gRPC credentials built from them.

Plaintext is the default. TLS is on for a process when it is given a certificate:

* `MEDAID_TLS_DIR` / `--tls-dir DIR`: `DIR/ca.crt`, `DIR/<identity>.crt`, `DIR/<identity>.key`, where
  the identity is the process's role (`wallet`, `router`, `gateway`; a province's registry is
  `registry-<province>`; the CLI uses `operator`, the load harness `bench`); or
* `MEDAID_TLS_CERT` + `MEDAID_TLS_KEY` + `MEDAID_TLS_CA` (`--tls-cert/--tls-key/--tls-ca`): explicit files.

The identity a peer authenticates as is its certificate's subject CN (else its first SAN); see
`medaid.common.authz`. Each certificate is good for both ends of a connection (serverAuth and
clientAuth), carries SANs `<identity>`, `localhost` and `127.0.0.1` (plus any `--host` given to
`make certs`), and servers always require a client certificate signed by the same CA.
`MEDAID_TLS_SERVER_NAME` overrides the name a client checks in server certificates (when services
are reached by an address that is not in their SANs).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import ipaddress
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from medaid.common import config

if TYPE_CHECKING:
    from cryptography import x509

# Service identities and the client identities that `make certs` issues.
SERVICE_IDENTITIES = ("registry", "wallet", "router", "gateway")
CLIENT_IDENTITIES = ("operator", "bench", "console")
# A province's registry presents `registry-<province>` (the wallet lets it act for that province
# only): `make certs` issues one for each of these (`make up`'s provinces); others by --identity.
REGISTRY_PROVINCES = ("13", "11", "62", "35")


def registry_identity(province: str) -> str:
    return f"registry-{province}"


DEFAULT_IDENTITIES = SERVICE_IDENTITIES + tuple(registry_identity(p) for p in REGISTRY_PROVINCES) + CLIENT_IDENTITIES
DEFAULT_DIR = "build/certs"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")

OPTIONS = (
    config.Option("tls_dir", "", "folder with ca.crt and <identity>.crt/.key (`make certs`); empty: plaintext",
                  config.PATH),
    config.Option("tls_cert", "", "this process's certificate (PEM), instead of --tls-dir", config.PATH),
    config.Option("tls_key", "", "this process's private key (PEM), instead of --tls-dir", config.PATH),
    config.Option("tls_ca", "", "CA certificate (PEM) that signs every peer, instead of --tls-dir", config.PATH),
    config.Option("tls_server_name", "", "name to check in server certificates (default: the address's host)"),
)


@dataclass(frozen=True)
class TlsConfig:
    cert_chain: bytes
    private_key: bytes
    root_ca: bytes
    server_name: str = ""

    def server_credentials(self) -> grpc.ServerCredentials:
        """Present our certificate; require and verify a client certificate from the CA."""
        return grpc.ssl_server_credentials([(self.private_key, self.cert_chain)], root_certificates=self.root_ca,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.root_ca, private_key=self.private_key,
                                            certificate_chain=self.cert_chain)

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def load(identity: str, *, tls_dir: str = "", cert: str = "", key: str = "", ca: str = "",
         server_name: str = "") -> TlsConfig | None:
    """The TLS configuration of a process acting as `identity`; None for plaintext."""
    if tls_dir:
        d = Path(tls_dir)
        cert = cert or str(d / f"{identity}.crt")
        key = key or str(d / f"{identity}.key")
        ca = ca or str(d / "ca.crt")
    if not (cert or key or ca):
        return None
    missing = [n for n, v in (("cert", cert), ("key", key), ("ca", ca)) if not v]
    if missing:
        raise config.Unusable("--tls-cert, --tls-key and --tls-ca (MEDAID_TLS_CERT, MEDAID_TLS_KEY, MEDAID_TLS_CA) "
                              f"go together; missing: {', '.join('--tls-' + n for n in missing)}")
    try:
        return TlsConfig(Path(cert).read_bytes(), Path(key).read_bytes(), Path(ca).read_bytes(), server_name)
    except OSError as exc:
        where = f"--tls-dir (MEDAID_TLS_DIR) {tls_dir}" if tls_dir else "--tls-cert/--tls-key/--tls-ca"
        raise config.Unusable(f"{where}: the TLS files of identity {identity!r}: {exc} (run `make certs`?)") from None


def from_config(identity: str, cfg: Mapping[str, Any]) -> TlsConfig | None:
    """From a service's parsed options (`OPTIONS` above)."""
    return load(identity, tls_dir=cfg.get("tls_dir", ""), cert=cfg.get("tls_cert", ""), key=cfg.get("tls_key", ""),
                ca=cfg.get("tls_ca", ""), server_name=cfg.get("tls_server_name", ""))


def from_env(identity: str, environ: Mapping[str, str] | None = None) -> TlsConfig | None:
    env = os.environ if environ is None else environ
    return load(identity, tls_dir=env.get("MEDAID_TLS_DIR", ""), cert=env.get("MEDAID_TLS_CERT", ""),
                key=env.get("MEDAID_TLS_KEY", ""), ca=env.get("MEDAID_TLS_CA", ""),
                server_name=env.get("MEDAID_TLS_SERVER_NAME", ""))


# --- the development CA (`make certs`) ------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medaid development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    path.write_bytes(data)
    if secret:
        path.chmod(0o600)


def generate(out_dir: str | os.PathLike[str], identities: Iterable[str] = DEFAULT_IDENTITIES, *,
             hosts: Sequence[str] = DEFAULT_HOSTS, days: int = 825, ca_name: str = "medaid development CA",
             reuse_ca: bool = True) -> Path:
    """Write `ca.crt`/`ca.key` (reused when present) and `<identity>.crt`/`.key` for each identity.

    Keys are ECDSA P-256. Every leaf certificate has CN = identity, SANs identity + `hosts` (+ the
    service of a `<service>-<suffix>` identity such as `registry-13`, the name a replica list is
    checked against), and is valid for serverAuth and clientAuth."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.UTC) - _dt.timedelta(minutes=5)
    pem = serialization.Encoding.PEM
    ca_crt, ca_key_path = out / "ca.crt", out / "ca.key"
    if reuse_ca and ca_crt.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(ca_name)
        ca_cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(ca_key_path, ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), secret=True)
        _write(ca_crt, ca_cert.public_bytes(pem))
    for identity in identities:
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(identity)]
        service = identity.split("-", 1)[0]
        if service != identity and service in SERVICE_IDENTITIES:
            sans.append(x509.DNSName(service))
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder().subject_name(_name(identity)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(out / f"{identity}.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()), secret=True)
        _write(out / f"{identity}.crt", cert.public_bytes(pem))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medaid.common.tls",
                                description="Create a development CA and per-identity certificates (make certs).")
    p.add_argument("--out", default=os.environ.get("MEDAID_TLS_DIR") or DEFAULT_DIR)
    p.add_argument("--identity", action="append", default=[],
                   help="extra identity, e.g. an institution's fixmedins_code (repeatable)")
    p.add_argument("--host", action="append", default=[], help="extra SAN (DNS name or IP) on every certificate")
    p.add_argument("--days", type=int, default=825)
    p.add_argument("--new-ca", action="store_true", help="replace an existing CA (every certificate is reissued)")
    a = p.parse_args(argv)
    identities = list(dict.fromkeys([*DEFAULT_IDENTITIES, *a.identity]))
    out = generate(a.out, identities, hosts=[*DEFAULT_HOSTS, *a.host], days=a.days, reuse_ca=not a.new_ca)
    print(f"certificates for {', '.join(identities)} (CA {out / 'ca.crt'}) in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
