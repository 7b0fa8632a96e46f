"""Which public key belongs to which node: the certificates our PKI issued (docs/protocol.md 7.1, "Node registry").

RainMaker's cloud knows a node's certificate from claiming, which issued it. Here `rmkit pki` and
`rmkit factory` stand in for claiming (rmkit.pki: `nodes/<node_id>/<node_id>.crt.pem`), so the cloud
reads a node's certificate from that directory and takes it only if the PKI's CA signed it, its CN is
the node id and it is within its validity dates. Nothing a client sends is ever taken as a key.

The registry never writes into the PKI (rmkit.pki.Pki would create a CA where there is none). Each
lookup costs two stat() calls: a parsed certificate is reused until its file or the CA's changes, so
several HTTP processes (rmkit.cloud.http_worker) each keep their own cache and still see a re-issued
certificate at once.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
from pathlib import Path
from typing import Optional, Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID

from rmkit.cloud.node_signature import NodePublicKey, UnsupportedNodeKey, check_node_key
from rmkit.pki import ca_certificate_path, is_valid_name, node_certificate_path

log = logging.getLogger("rmkit.cloud.nodes")

_CACHED_CERTIFICATES = 4096


class NodeRegistry(Protocol):
    def public_key(self, node_id: str) -> Optional[NodePublicKey]:
        """The node's public key, None when the node is unknown; UnsupportedNodeKey when its
        certificate holds a key that cannot sign challenges."""


class NoNodes:
    """The registry of a cloud without a PKI: every node is unknown."""

    def public_key(self, node_id: str) -> Optional[NodePublicKey]:
        return None

    def __str__(self) -> str:
        return "no PKI"


class PkiNodeRegistry:
    """Node certificates from a PKI directory (rmkit.pki's layout), checked against its CA."""

    def __init__(self, pki_dir: Path | str):
        self.pki_dir = Path(pki_dir)
        self._ca_path = ca_certificate_path(self.pki_dir)
        if not self._ca_path.is_file():
            log.warning("no CA at %s: every node is unknown to challenge-response mapping until "
                        "`rmkit pki init` makes one", self._ca_path)

    def __str__(self) -> str:
        return f"node certificates of the PKI in {self.pki_dir}"

    def public_key(self, node_id: str) -> Optional[NodePublicKey]:
        if not is_valid_name(node_id):  # also keeps the id from naming a path outside nodes/
            return None
        cert_path = node_certificate_path(self.pki_dir, node_id)
        ca_version, cert_version = _file_version(self._ca_path), _file_version(cert_path)
        if ca_version is None or cert_version is None:
            return None
        cert = _issued_certificate(str(self._ca_path), ca_version, str(cert_path), cert_version)
        if cert is None or not _names(cert, node_id) or not _valid_now(cert):
            return None
        return check_node_key(cert.public_key())


def node_registry(pki_dir: Optional[Path | str]) -> NodeRegistry:
    """The nodes' certificates for challenge-response mapping: those of the PKI in `pki_dir`, or none."""
    return PkiNodeRegistry(pki_dir) if pki_dir is not None else NoNodes()


def _file_version(path: Path) -> Optional[tuple[int, int, int]]:
    """What tells one content of a file from the next (inode, size, mtime), None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=_CACHED_CERTIFICATES)
def _issued_certificate(ca_path: str, ca_version: tuple, cert_path: str,
                        cert_version: tuple) -> Optional[x509.Certificate]:
    """The certificate at `cert_path` if the CA at `ca_path` signed it, else None; cached per version
    of both files (the versions are part of the cache key)."""
    try:
        ca = x509.load_pem_x509_certificate(Path(ca_path).read_bytes())
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("unreadable certificate %s: %s", cert_path, exc)
        return None
    try:
        cert.verify_directly_issued_by(ca)
    except Exception as exc:  # InvalidSignature, ValueError (issuer differs), TypeError (key type)
        log.warning("certificate %s was not issued by the CA %s (%s): ignored", cert_path, ca_path,
                    type(exc).__name__)
        return None
    return cert


def _names(cert: x509.Certificate, node_id: str) -> bool:
    """docs/protocol.md 7.3: a node's certificate CN is its node id."""
    return [attr.value for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [node_id]


def _valid_now(cert: x509.Certificate) -> bool:
    now = datetime.datetime.now(datetime.timezone.utc)
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


__all__ = ["NoNodes", "NodeRegistry", "PkiNodeRegistry", "UnsupportedNodeKey", "node_registry"]
