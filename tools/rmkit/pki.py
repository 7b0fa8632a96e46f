"""Local PKI, the stand-in for RainMaker's claiming: a CA, the broker's server certificate, node and host client certificates.

Every certificate and key is written twice: PEM for host tools (CPython's ssl, mosquitto, paho) and
DER for the board (the MicroPython unix port's mbedtls is built without a PEM parser: a PEM
certificate or key fails with "invalid cert"/"invalid key"). All keys are EC P-256, written with mode 0600 and never
logged. Re-running is idempotent: an identity that exists, matches its key and was signed by the
current CA is reused, so boards keep their certificates across test runs.

Layout under the PKI directory (the repository's gitignored pki/ by default)::

    ca/ca.crt.pem ca.crt.der ca.key.pem
    broker/broker.{crt,key}.{pem,der}
    nodes/<node_id>/<node_id>.{crt,key}.{pem,der}
    clients/<name>/<name>.{crt,key}.{pem,der}
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rmkit import REPO_ROOT, venv_tool
from rmkit.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_PKI_DIR = REPO_ROOT / "pki"
CA_NAME = "rmkit local CA"
BROKER_NAME = "broker"
# The cloud's client identities, one per instance slot (rmkit.cloud.service): the broker binds the MQTT
# client id to the certificate's CN, so each instance's persistent session needs a certificate of its own.
CLOUD_SLOTS = 64


def cloud_identity(slot: int) -> str:
    """The identity (certificate CN = MQTT client id = session) of the cloud instance in `slot`."""
    return "cloud" if slot == 0 else f"cloud-{slot}"


def cloud_identities() -> list[str]:
    return [cloud_identity(slot) for slot in range(CLOUD_SLOTS)]
# The broker certificate always names these (the local cloud and virtual boards connect to them);
# `rmkit pki init --broker-host` adds the names and addresses a real board uses.
DEFAULT_BROKER_HOSTS = ("localhost", "127.0.0.1")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_host(host: str) -> str:
    """A host name or IP address for the broker certificate, normalized (lower case, no trailing dot)."""
    text = host.strip() if isinstance(host, str) else ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.rstrip(".").lower()
    if not name or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in name.split(".")) \
            or name.replace(".", "").isdigit():
        raise PkiError(f"--broker-host {host!r}: give a host name (e.g. mypc.local) or an IP address "
                       "(e.g. 192.168.1.20), without port or scheme")
    return name


def _split_hosts(hosts: Iterable[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses), the defaults first, each once, in the order given."""
    dns, ips = [], []
    for host in (*DEFAULT_BROKER_HOSTS, *hosts):
        host = check_host(host)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            target = dns
        else:
            target = ips
        if host not in target:
            target.append(host)
    return dns, ips


def san_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate names (its subjectAltName), as text."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def names_host(cert: x509.Certificate, host: str) -> bool:
    """True when a TLS client checking `host` accepts `cert`: an IP address must be one of its IP
    entries, a name one of its DNS entries (no wildcards are issued here)."""
    try:
        wanted = str(ipaddress.ip_address(host.strip()))
    except ValueError:
        wanted = host.strip().rstrip(".").lower()
    return wanted in [name.lower() for name in san_names(cert)]


# node ids and client names end up in file names and in mosquitto's `%u` ACL pattern, so they must
# not carry '/', '+', '#' or whitespace (RainMaker node ids are 12 hex chars or 22 base62 chars, docs/protocol.md 7.3)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VALIDITY = datetime.timedelta(days=3650)
# notBefore a day back: a node checks dates against an SNTP clock, which may run behind this host's
_BACKDATE = datetime.timedelta(days=1)


class PkiError(UserError):
    """The PKI directory holds something unusable (unreadable key, foreign file)."""


def ca_certificate_path(directory: Path | str) -> Path:
    """Where a PKI directory keeps its CA certificate (PEM)."""
    return Path(directory) / "ca" / "ca.crt.pem"


def node_certificate_path(directory: Path | str, node_id: str) -> Path:
    """Where a PKI directory keeps the certificate (PEM) `node_identity(node_id)` issued; `node_id` must
    pass check_name (it becomes a directory and a file name)."""
    return Path(directory) / "nodes" / node_id / f"{node_id}.crt.pem"


def is_valid_name(name: str) -> bool:
    """True when check_name() would take `name`."""
    # fullmatch: with match(), `$` would also take a name ending in a newline ("N1\n")
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class Identity:
    """One certificate + key pair, as PEM (host tools) and DER (the board)."""

    name: str
    cert_pem: Path
    key_pem: Path
    cert_der: Path
    key_der: Path

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.cert_pem, self.key_pem, self.cert_der, self.key_der))

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.read_bytes())


def check_name(name: str, what: str = "name") -> str:
    if not is_valid_name(name):
        raise PkiError(f"invalid {what} {name!r}: use 1-64 characters from A-Z a-z 0-9 _ . - (not starting with . _ -)")
    return name


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file that is 0600 from its first byte (no window where it is world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Pki:
    """A CA in `directory` (created on first use) that issues the broker, node and host identities."""

    def __init__(self, directory: Path | str = DEFAULT_PKI_DIR) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        ca_dir = self.directory / "ca"
        self.ca_pem = ca_certificate_path(self.directory)
        self.ca_der = ca_dir / "ca.crt.der"
        self._ca_key_pem = ca_dir / "ca.key.pem"
        self._ca_key, self._ca_cert = self._load_or_create_ca()

    # -- CA -------------------------------------------------------------------------------------

    def _load_or_create_ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if self.ca_pem.is_file() and self._ca_key_pem.is_file():
            try:
                key = serialization.load_pem_private_key(self._ca_key_pem.read_bytes(), password=None)
                cert = x509.load_pem_x509_certificate(self.ca_pem.read_bytes())
            except ValueError as exc:
                raise PkiError(f"{self.ca_pem.parent} holds an unreadable CA ({exc}); move it away to start a new CA") from None
            if not self.ca_der.is_file():
                _write_public(self.ca_der, cert.public_bytes(serialization.Encoding.DER))
            return key, cert
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rmkit")])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(self._ca_key_pem, key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
        _write_public(self.ca_pem, cert.public_bytes(serialization.Encoding.PEM))
        _write_public(self.ca_der, cert.public_bytes(serialization.Encoding.DER))
        log.info("created CA in %s", self.ca_pem.parent)
        return key, cert

    @property
    def ca_certificate(self) -> x509.Certificate:
        return self._ca_cert

    # -- identities -----------------------------------------------------------------------------

    def broker_identity(self, hosts: Optional[Iterable[str]] = None) -> Identity:
        """The broker's server certificate (EKU serverAuth): SAN localhost, 127.0.0.1 and `hosts` (host
        names or IP addresses a board connects to). hosts=None keeps the names of the current broker
        certificate (localhost and 127.0.0.1 for a new one); other hosts re-issue it, the CA stays."""
        if hosts is None:
            current = self._usable_certificate(self._identity_paths(self.directory / "broker", BROKER_NAME))
            hosts = san_names(current) if current is not None else ()
        dns_names, ip_addresses = _split_hosts(hosts)
        return self.server_identity(BROKER_NAME, dns_names=dns_names, ip_addresses=ip_addresses)

    def broker_certificate(self) -> Optional[x509.Certificate]:
        """The current broker certificate, or None when there is none from this CA."""
        return self._usable_certificate(self._identity_paths(self.directory / "broker", BROKER_NAME))

    def server_identity(self, name: str, dns_names: Iterable[str] = (), ip_addresses: Iterable[str] = ()) -> Identity:
        """A server certificate for other host names (tests use it to present a broker naming another host)."""
        check_name(name, "server name")
        dns_names, ip_addresses = list(dns_names), list(ip_addresses)
        san = [x509.DNSName(d) for d in dns_names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        directory = self.directory / "broker" if name == BROKER_NAME else self.directory / "servers" / name
        cn = dns_names[0] if dns_names else name
        return self._issue(directory, name, cn, ExtendedKeyUsageOID.SERVER_AUTH, san)

    def node_identity(self, node_id: str) -> Identity:
        """A node's client certificate: CN = node id (the broker's ACL user, docs/protocol.md 5.1), EKU clientAuth."""
        check_name(node_id, "node id")
        return self._issue(self.directory / "nodes" / node_id, node_id, node_id, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def client_identity(self, name: str) -> Identity:
        """A host tool's client certificate (e.g. "cloud", "harness"): CN = name, EKU clientAuth."""
        check_name(name, "client name")
        return self._issue(self.directory / "clients" / name, name, name, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def node_ids(self) -> list[str]:
        nodes = self.directory / "nodes"
        return sorted(p.name for p in nodes.iterdir() if p.is_dir()) if nodes.is_dir() else []

    def _identity_paths(self, directory: Path, name: str) -> Identity:
        return Identity(name=name,
                        cert_pem=directory / f"{name}.crt.pem", key_pem=directory / f"{name}.key.pem",
                        cert_der=directory / f"{name}.crt.der", key_der=directory / f"{name}.key.der")

    def _usable_certificate(self, identity: Identity) -> Optional[x509.Certificate]:
        """The certificate of the files on disk when they are an identity from this CA (signed by it,
        the key matching, valid for more than a day), else None."""
        if not identity.exists():
            return None
        try:
            cert = identity.certificate()
            key = serialization.load_pem_private_key(identity.key_pem.read_bytes(), password=None)
        except ValueError:
            return None
        if cert.issuer != self._ca_cert.subject:
            return None
        try:
            cert.verify_directly_issued_by(self._ca_cert)
        except (ValueError, TypeError, Exception):  # InvalidSignature is not a ValueError
            return None
        if key.public_key().public_numbers() != cert.public_key().public_numbers():
            return None
        if cert.not_valid_after_utc <= _now() + datetime.timedelta(days=1):
            return None
        return cert

    def _is_current(self, identity: Identity, cn: str, san: list) -> bool:
        """True when the files on disk are a usable identity from this CA with the wanted names."""
        cert = self._usable_certificate(identity)
        if cert is None:
            return False
        if cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value != cn:
            return False
        try:
            have_san = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            have_san = []
        return sorted(map(repr, have_san)) == sorted(map(repr, san))

    def _issue(self, directory: Path, name: str, cn: str, eku, san: list) -> Identity:
        identity = self._identity_paths(directory, name)
        if self._is_current(identity, cn, san):
            return identity
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        # PKCS#8 for both encodings: the unix port's mbedtls reads PKCS#8 DER, CPython reads PEM
        _write_private(identity.key_pem, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
        _write_private(identity.key_der, key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
        _write_public(identity.cert_pem, cert.public_bytes(serialization.Encoding.PEM))
        _write_public(identity.cert_der, cert.public_bytes(serialization.Encoding.DER))
        log.info("issued certificate CN=%s in %s", cn, directory)
        return identity


# -- CLI ----------------------------------------------------------------------------------------

def _describe(identity: Identity) -> str:
    cert = identity.certificate()
    names = san_names(cert)
    return (f"{identity.name}: {cert.subject.rfc4514_string()} valid until {cert.not_valid_after_utc:%Y-%m-%d}  "
            f"{identity.cert_pem}" + (f"  (for {', '.join(names)})" if names else ""))


def _cmd_init(args) -> int:
    hosts = [check_host(host) for host in args.broker_host] if args.broker_host else None
    pki = Pki(args.dir)
    print(f"CA: {pki.ca_pem}")
    before = pki.broker_certificate()
    broker = pki.broker_identity(hosts)
    for identity in (broker, pki.client_identity("cloud"), pki.client_identity("harness")):
        print(_describe(identity))
    if before is not None and before.serial_number != broker.certificate().serial_number:
        print(f"broker certificate re-issued for {', '.join(san_names(broker.certificate()))} (same CA): restart "
              "a running broker (make cloud, rmkit broker) so that it presents the new one")
    return 0


def _cmd_node(args) -> int:
    pki = Pki(args.dir)
    identity = pki.node_identity(args.node_id)
    print(_describe(identity))
    print(f"board files (DER): {identity.cert_der} {identity.key_der} {pki.ca_der}")
    return 0


def _cmd_show(args) -> int:
    directory = Path(args.dir)
    if not (directory / "ca" / "ca.crt.pem").is_file():
        raise UserError(f"no CA in {directory}: run `{venv_tool('rmkit')} pki init` first")
    pki = Pki(directory)
    cert = pki.ca_certificate
    print(f"CA: {cert.subject.rfc4514_string()} valid until {cert.not_valid_after_utc:%Y-%m-%d}  {pki.ca_pem}")
    found = [pki._identity_paths(directory / "broker", BROKER_NAME)]
    for sub in ("clients", "nodes", "servers"):
        if (directory / sub).is_dir():
            found += [pki._identity_paths(p, p.name) for p in sorted((directory / sub).iterdir()) if p.is_dir()]
    for identity in found:
        if identity.exists():
            print(_describe(identity))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pki", help="local CA and certificates (stand-in for RainMaker claiming)",
        description="Create and inspect the local PKI: a CA, the broker certificate (localhost, 127.0.0.1 and "
        "the hosts given to `init --broker-host`), "
        "per-node client certificates (CN = node id) and host identities (cloud, harness). Keys are EC P-256, "
        "mode 0600, written as PEM (host) and DER (board); they never leave this machine.")
    parser.add_argument("--dir", default=str(DEFAULT_PKI_DIR), help="PKI directory (default: %(default)s)")
    sub = parser.add_subparsers(dest="pki_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("init", help="create the CA, broker, cloud and harness identities (idempotent)",
                       description="Create the CA (kept once made), the broker's server certificate and the cloud "
                       "and harness client certificates. The broker certificate names localhost and 127.0.0.1 "
                       "plus every --broker-host: the name or address a real board connects to (it checks it). "
                       "Giving other hosts re-issues the broker certificate, none keeps its names.")
    p.add_argument("--broker-host", action="append", metavar="HOST",
                   help="a host name or IP address the broker certificate names, e.g. this computer's LAN "
                   "address 192.168.1.20 (repeatable; localhost and 127.0.0.1 are always named)")
    p.set_defaults(func=_cmd_init)
    p = sub.add_parser("node", help="issue (or show) a node's client certificate")
    p.add_argument("node_id", help="the node id, used as the certificate CN and the broker user name")
    p.set_defaults(func=_cmd_node)
    p = sub.add_parser("show", help="list the CA and every identity")
    p.set_defaults(func=_cmd_show)

