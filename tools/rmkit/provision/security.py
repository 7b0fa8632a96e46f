"""Client side of protocomm session security: Security 0 (plaintext) and Security 1 (docs/protocol.md 3.2, 3.3).

A security object runs the prov-session handshake through a callable `exchange(request) -> response`
and then encrypts requests / decrypts responses of the secured endpoints.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from google.protobuf.message import DecodeError

from rmkit.proto import pb
from rmkit.provision.errors import DeviceUnreachable, HandshakeFailed, ProtocolError, TransportError

Exchange = Callable[[bytes], bytes]


def _parse_session(data: bytes, step: str):
    try:
        return pb.SessionData.FromString(data)
    except DecodeError as exc:
        raise ProtocolError(f"prov-session {step}: node sent a malformed SessionData ({len(data)} bytes)") from exc


def _status_name(status: int) -> str:
    try:
        return pb.Status.Name(status)
    except ValueError:
        return str(status)


class Security0:
    """No encryption; the handshake only checks that the node runs Security 0."""

    version = 0

    def handshake(self, exchange: Exchange) -> None:
        request = pb.SessionData(sec_ver=pb.SecSchemeVersion.SecScheme0)
        request.sec0.sc.SetInParent()  # docs/protocol.md 3.2: the empty S0SessionCmd is present on the wire (5203a20100)
        response = _parse_session(exchange(request.SerializeToString()), "Sec0")
        if response.sec_ver != pb.SecSchemeVersion.SecScheme0 or response.WhichOneof("proto") != "sec0":
            raise HandshakeFailed(f"node answered security version {response.sec_ver}, not 0")
        if response.sec0.sr.status != pb.Status.Success:
            raise HandshakeFailed(f"node refused the Security 0 session: {_status_name(response.sec0.sr.status)}")

    def encrypt(self, data: bytes) -> bytes:
        return data

    def decrypt(self, data: bytes) -> bytes:
        return data


class Security1:
    """X25519 key agreement, key = shared XOR SHA256(PoP), AES-256-CTR with one keystream for both directions."""

    version = 1

    def __init__(self, pop: str | bytes | None):
        self._pop = pop.encode() if isinstance(pop, str) else (pop or b"")
        self._cipher = None

    def handshake(self, exchange: Exchange) -> None:
        private_key = X25519PrivateKey.generate()
        client_pubkey = private_key.public_key().public_bytes_raw()

        # Session_Command0; like Espressif's client, msg stays 0 and is omitted on the wire (docs/protocol.md 3.1)
        cmd0 = pb.SessionData(sec_ver=pb.SecSchemeVersion.SecScheme1)
        cmd0.sec1.sc0.client_pubkey = client_pubkey
        resp0 = _parse_session(exchange(cmd0.SerializeToString()), "Sec1 response 0")
        self._check(resp0, "response 0", "sr0")
        device_pubkey = resp0.sec1.sr0.device_pubkey
        device_random = resp0.sec1.sr0.device_random
        if len(device_pubkey) != 32 or len(device_random) != 16:
            raise ProtocolError(f"Sec1 response 0: public key of {len(device_pubkey)} bytes, "
                                f"random of {len(device_random)} bytes (expected 32 and 16)")
        try:
            shared = private_key.exchange(X25519PublicKey.from_public_bytes(device_pubkey))
        except ValueError as exc:  # an all-zero shared secret: a low-order point from the node
            raise HandshakeFailed("node sent an invalid X25519 public key") from exc
        key = shared
        if self._pop:
            digest = hashlib.sha256(self._pop).digest()
            key = bytes(a ^ b for a, b in zip(shared, digest))
        # docs/protocol.md 3.3: the full 16-byte device_random is the initial counter block; the stream is shared
        self._cipher = Cipher(algorithms.AES(key), modes.CTR(device_random)).encryptor()

        cmd1 = pb.SessionData(sec_ver=pb.SecSchemeVersion.SecScheme1)
        cmd1.sec1.msg = pb.Sec1MsgType.Session_Command1
        cmd1.sec1.sc1.client_verify_data = self._cipher.update(device_pubkey)
        try:
            raw = exchange(cmd1.SerializeToString())
        except DeviceUnreachable:
            raise
        except TransportError as exc:
            # docs/protocol.md 3.3: a node whose PoP differs fails Cmd1 and closes the connection (or answers 500)
            raise HandshakeFailed("node rejected the session at the PoP check (wrong PoP?): " + str(exc)) from exc
        resp1 = _parse_session(raw, "Sec1 response 1")
        self._check(resp1, "response 1", "sr1")
        device_verify = self._cipher.update(resp1.sec1.sr1.device_verify_data)
        if not hmac.compare_digest(device_verify, client_pubkey):
            raise HandshakeFailed("node's verify data does not match: the node has a different PoP")

    def _check(self, response, step: str, field: str) -> None:
        if response.sec_ver != pb.SecSchemeVersion.SecScheme1 or response.WhichOneof("proto") != "sec1":
            raise HandshakeFailed(f"Sec1 {step}: node answered security version {response.sec_ver}, not 1")
        if response.sec1.WhichOneof("payload") != field:
            raise ProtocolError(f"Sec1 {step}: expected {field}, got {response.sec1.WhichOneof('payload')}")
        status = getattr(response.sec1, field).status
        if status != pb.Status.Success:
            raise HandshakeFailed(f"Sec1 {step}: node answered status {_status_name(status)}")

    def encrypt(self, data: bytes) -> bytes:
        if self._cipher is None:
            raise RuntimeError("Security 1 session not established")
        return self._cipher.update(data)

    # CTR: decryption is the same keystream XOR, continued in exchange order (docs/protocol.md 3.3)
    decrypt = encrypt


def make_security(sec_ver: int, pop: str | None):
    if sec_ver == 0:
        return Security0()
    if sec_ver == 1:
        return Security1(pop)
    raise ProtocolError(f"security version {sec_ver} is not supported by this client (only 0 and 1)")
