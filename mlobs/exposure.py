"""OTLP for other hosts: a second pair of collector receivers, with TLS and a bearer token.

stack.yaml ``otlp.expose.enabled: true`` adds the receiver ``otlp/exposed`` on
``otlp.expose.address`` at the ports ``otlp_grpc_tls`` and ``otlp_http_tls``. Every call must come
over TLS, with ``Authorization: Bearer <MLOBS_OTLP_TOKEN>`` (the collector's ``bearertokenauth``
extension checks it). The loopback receiver ``otlp`` is unchanged, so the services on this host
need neither.

The certificates are made here, once per clone, with the ``cryptography`` package: a local CA
(``ca.crt``, which clients trust) and a server certificate it signs, for this host's name, its
addresses and ``otlp.expose.cert_hostnames``. They live in ``.stack/tls/`` (gitignored); the
private keys are mode 0600. The server certificate is made again when the names it must cover
change or it has less than 30 days left.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlobs.config import Stack

TOKEN_VAR = "MLOBS_OTLP_TOKEN"
AUTHENTICATOR = "bearertokenauth/otlp"
RECEIVER = "otlp/exposed"
PORT_KEYS = {"grpc": "otlp_grpc_tls", "http": "otlp_http_tls"}
#: where the collector container reads the certificates (compose mounts .stack/tls there)
CONTAINER_DIR = "/etc/otelcol-contrib/tls"
CA_DAYS = 3650
SERVER_DAYS = 397  # what browsers accept for a leaf certificate
RENEW_BEFORE = dt.timedelta(days=30)


def enabled(stack: Stack) -> bool:
    return stack.otlp.expose.enabled


@dataclass(frozen=True)
class Certificates:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def key(self) -> Path:
        return self.dir / "server.key"


def subject_names(stack: Stack) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses the server certificate covers: loopback, this host's name and
    addresses, the bound address (unless it is the wildcard) and ``otlp.expose.cert_hostnames``."""
    names = ["localhost", socket.gethostname(), *stack.otlp.expose.cert_hostnames]
    fqdn = socket.getfqdn()
    if fqdn and "." in fqdn:
        names.append(fqdn)
    ips = ["127.0.0.1", "::1"]
    address = stack.otlp.expose.address
    if not ipaddress.ip_address(address).is_unspecified:
        ips.append(address)
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            ips.append(str(info[4][0]).split("%", 1)[0])
    except OSError:  # a host name that does not resolve: its addresses are not known
        pass
    if (out := outgoing_address()) is not None:
        ips.append(out)
    return sorted(set(names)), sorted(set(ips), key=lambda a: (":" in a, a))


def outgoing_address() -> str | None:
    """The IPv4 address of the interface this host uses to reach other hosts (what they dial),
    found without sending a packet; None on a host without a route. The host name often resolves
    to loopback only, so its addresses alone miss this one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # UDP: connect() picks a route, sends nothing
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)
        f.write(data)


def _covers(cert: Any, dns: list[str], ips: list[str]) -> bool:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return set(dns) <= have_dns and set(ips) <= have_ips


def ensure(stack: Stack, tls_dir: Path, now: dt.datetime | None = None) -> tuple[Certificates, list[str]]:
    """Make the CA and the server certificate where missing, expiring or not covering the names;
    return the files and what was made (for the `up` output)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or dt.datetime.now(dt.UTC)
    certs = Certificates(tls_dir)
    tls_dir.mkdir(parents=True, exist_ok=True)
    tls_dir.chmod(0o700)
    made: list[str] = []

    def valid(path: Path) -> Any:
        if not path.exists():
            return None
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        return cert if cert.not_valid_after_utc - now > RENEW_BEFORE else None

    ca_cert = valid(certs.ca) if certs.ca_key.exists() else None
    if ca_cert is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mlobs local CA ({socket.gethostname()})")])
        ca_cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(certs.ca_key, ca_key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
        certs.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        certs.cert.unlink(missing_ok=True)  # signed by the old CA
        made.append(str(certs.ca))
    else:
        ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)

    dns, ips = subject_names(stack)
    server = valid(certs.cert) if certs.key.exists() else None
    if server is None or not _covers(server, dns, ips) or server.issuer != ca_cert.subject:
        key = ec.generate_private_key(ec.SECP256R1())
        san = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname())]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
                           critical=False)
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        _write_private(certs.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
        certs.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        made.append(str(certs.cert))
    return certs, made


# ---- what the collector template reads ----------------------------------------------------


def tls_dir(target: Any) -> str:
    """The certificates' folder as the collector sees it."""
    if target.name == "native":
        return str(Path(target.data_dir).parent / "tls")
    return CONTAINER_DIR


def receiver(target: Any) -> dict[str, Any] | None:
    """The ``otlp/exposed`` receiver's config, or None when exposure is off (and on Kubernetes,
    where a Service and an Ingress decide what reaches the pods)."""
    stack: Stack = target.stack
    if not enabled(stack) or target.name == "kubernetes":
        return None
    folder = tls_dir(target)
    protocols = {}
    for proto, key in PORT_KEYS.items():
        if target.name == "native":
            address = f"{_bracket(stack.otlp.expose.address)}:{target.host_port(key)}"
        else:
            address = target.listen(key)
        protocols[proto] = {
            "endpoint": address,
            "tls": {"cert_file": f"{folder}/server.crt", "key_file": f"{folder}/server.key", "min_version": "1.2"},
            "auth": {"authenticator": AUTHENTICATOR},
        }
    return {"protocols": protocols}


def extension(stack: Stack) -> dict[str, dict[str, Any]]:
    """The bearer-token authenticator, its token from the environment (never in the file)."""
    if not enabled(stack):
        return {}
    return {AUTHENTICATOR: {"scheme": "Bearer", "token": "${env:" + TOKEN_VAR + "}"}}


def collector_env(place: Any) -> dict[str, str]:
    if not enabled(place.stack):
        return {}
    return {TOKEN_VAR: place.secret(TOKEN_VAR)}


def compose_ports(stack: Stack) -> list[str]:
    """What compose publishes for the exposed receivers: on the exposed address, not 127.0.0.1."""
    from mlobs import components as registry

    if not enabled(stack):
        return []
    collector = registry.get("otel-collector")
    return [f"{_bracket(stack.otlp.expose.address)}:{getattr(stack.ports, key)}:{collector.port(key).container}"
            for key in PORT_KEYS.values()]


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address
