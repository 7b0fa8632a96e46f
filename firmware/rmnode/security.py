"""Protocomm session security: Security 0 (plaintext) and Security 1 (X25519 + PoP + AES-256-CTR).

One object per client session. `handle(request)` takes a `prov-session` request (SessionData bytes)
and returns the response bytes; once `established` is true, `encrypt`/`decrypt` protect the
secured endpoints. Failures raise SecurityError subclasses carrying the reason.
"""

import hashlib
import os

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import pb
from rmnode import x25519
from rmnode.aes_ctr import AESCTR

# sec0.proto / sec1.proto message types, constants.proto Status
_SEC0_SESSION_COMMAND = const(0)
_SEC0_SESSION_RESPONSE = const(1)
_SEC1_SESSION_COMMAND0 = const(0)
_SEC1_SESSION_RESPONSE0 = const(1)
_SEC1_SESSION_COMMAND1 = const(2)
_SEC1_SESSION_RESPONSE1 = const(3)
_STATUS_SUCCESS = const(0)


class SecurityError(Exception):
    """A handshake or session-security failure (the session cannot be used)."""


class HandshakeError(SecurityError):
    """The handshake failed; the message says why (wrong PoP, version mismatch, bad message)."""


class NotEstablished(SecurityError):
    """A secured request before the handshake completed."""


# Aliases, not subclasses: each exception class costs ~220 bytes of heap, and nothing handles
# these cases apart (protocomm answers every HandshakeError alike, docs/protocol.md 1.1).
SecurityVersionMismatch = HandshakeError
WrongPop = HandshakeError


# The handshake runs in a BLE IRQ handler with 4 KiB of C stack (docs/protocol.md 1.2): the request is parsed
# inline in each handle(), not through a helper, and the whole path stays shallow.


class Security0:
    """Security 0 (docs/protocol.md 3.2): one round trip, no encryption afterwards."""

    version = 0

    def __init__(self):
        self.established = False

    def handle(self, request):
        try:
            req = pb.decode(pb.SessionData, request)
        except pb.DecodeError as e:
            raise HandshakeError("bad SessionData: %s" % e)
        if req["sec_ver"] != 0:
            raise SecurityVersionMismatch("security version mismatch: client sent %d, node uses 0" % req["sec_ver"])
        sec0 = req["sec0"]
        if sec0 is None or sec0["msg"] != _SEC0_SESSION_COMMAND:
            raise HandshakeError("expected a Security 0 session command")
        self.established = True
        return pb.encode(pb.SessionData, {
            "sec_ver": 0,
            "sec0": {"msg": _SEC0_SESSION_RESPONSE, "sr": {"status": _STATUS_SUCCESS}},
        })

    def encrypt(self, data):
        if not self.established:
            raise NotEstablished("request before the Security 0 handshake")
        return data

    decrypt = encrypt


_FRESH = const(0)
_WAIT_CMD1 = const(1)
_ESTABLISHED = const(2)


class Security1:
    """Security 1 (docs/protocol.md 3.3). `pop` is bytes; empty means no PoP ("no_pop")."""

    version = 1

    def __init__(self, pop=b""):
        self._pop_hash = hashlib.sha256(pop).digest() if pop else None
        self._restart()

    def _restart(self):
        self._state = _FRESH
        self._ctr = None
        self._device_pubkey = None
        self._client_pubkey = None

    @property
    def established(self):
        return self._state == _ESTABLISHED

    def handle(self, request):
        try:
            req = pb.decode(pb.SessionData, request)
        except pb.DecodeError as e:
            raise HandshakeError("bad SessionData: %s" % e)
        if req["sec_ver"] != 1:
            raise SecurityVersionMismatch("security version mismatch: client sent %d, node uses 1" % req["sec_ver"])
        sec1 = req["sec1"]
        if sec1 is None:
            raise HandshakeError("no Security 1 payload in SessionData")
        msg = sec1["msg"]  # the client leaves msg out on Cmd0: proto3 default 0 (docs/protocol.md 3.1)
        if msg == _SEC1_SESSION_COMMAND0:
            # docs/protocol.md 3.3: a Cmd0 in any state restarts the session
            self._restart()
            return self._command0(sec1["sc0"])
        if msg == _SEC1_SESSION_COMMAND1:
            if self._state != _WAIT_CMD1:
                self._restart()
                raise HandshakeError("session command 1 without a command 0 first")
            try:
                return self._command1(sec1["sc1"])
            except HandshakeError:
                self._restart()
                raise
        raise HandshakeError("unexpected Security 1 message type %d" % msg)

    def _command0(self, sc0):
        client_pubkey = sc0["client_pubkey"] if sc0 is not None else b""
        if len(client_pubkey) != 32:
            raise HandshakeError("client public key must be 32 bytes, got %d" % len(client_pubkey))
        private_key = x25519.generate_private_key()
        device_pubkey = x25519.public_key(private_key)
        try:
            key = x25519.shared_secret(private_key, client_pubkey)
        except x25519.X25519Error as e:
            raise HandshakeError(str(e))
        if self._pop_hash is not None:
            key = bytes(a ^ b for a, b in zip(key, self._pop_hash))
        device_random = os.urandom(16)
        # docs/protocol.md 3.3: the full 16-byte device_random is the initial counter block
        self._ctr = AESCTR(key, device_random)
        self._device_pubkey = device_pubkey
        self._client_pubkey = client_pubkey
        self._state = _WAIT_CMD1
        return pb.encode(pb.SessionData, {
            "sec_ver": 1,
            "sec1": {"msg": _SEC1_SESSION_RESPONSE0, "sr0": {
                "status": _STATUS_SUCCESS,
                "device_pubkey": device_pubkey,
                "device_random": device_random,
            }},
        })

    def _command1(self, sc1):
        verify_data = sc1["client_verify_data"] if sc1 is not None else b""
        if len(verify_data) != 32:
            raise HandshakeError("client verify data must be 32 bytes, got %d" % len(verify_data))
        # keystream bytes 0-31 (docs/protocol.md 3.3 step 4)
        expected = self._ctr.crypt(verify_data)
        diff = 0
        for a, b in zip(expected, self._device_pubkey):
            diff |= a ^ b
        if diff:
            raise WrongPop("key mismatch: the client used another proof of possession")
        # keystream bytes 32-63 (step 5)
        device_verify_data = self._ctr.crypt(self._client_pubkey)
        self._state = _ESTABLISHED
        return pb.encode(pb.SessionData, {
            "sec_ver": 1,
            "sec1": {"msg": _SEC1_SESSION_RESPONSE1, "sr1": {
                "status": _STATUS_SUCCESS,
                "device_verify_data": device_verify_data,
            }},
        })

    def encrypt(self, data):
        if self._state != _ESTABLISHED:
            raise NotEstablished("request before the Security 1 handshake completed")
        # docs/protocol.md 3.3: one keystream for both directions, continued across messages
        return self._ctr.crypt(data)

    decrypt = encrypt


def new_session(sec_ver, pop):
    """Security object for one client session; `pop` is a str or bytes."""
    if sec_ver == 0:
        return Security0()
    if isinstance(pop, str):
        pop = pop.encode("utf-8")
    return Security1(pop or b"")
