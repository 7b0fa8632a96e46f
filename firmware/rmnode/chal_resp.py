"""The `ch_resp` endpoint: challenge-response user-node mapping (docs/protocol.md 7.1).

A client relays a challenge from the cloud; the node signs SHA-256 of it with the private key of its MQTT
client certificate (ECDSA P-256, DER signature, rmnode.p256) and answers the signature and its node id. The
cloud checks the signature against the node's certificate and maps the user: nothing secret travels, and
nothing is published over MQTT for it (upstream publishes nothing either).

Not a signing oracle: the key that signs here also authenticates the node to the broker, and a TLS 1.2 client
CertificateVerify with ECDSA is exactly a signature over SHA-256 of the handshake messages. So only a challenge
of the form a cloud issues is signed: 1 to 256 bytes, each printable ASCII other than space (0x21-0x7E). A
handshake transcript is binary, and TLS 1.3's signed content starts with 64 spaces and holds a zero byte;
anything else gets the status InvalidParam.

Disable (message 4) turns the endpoint off until the next boot, as upstream does: every later request, in this
session or another, is answered Disabled. Get-node-id (message 2), which upstream leaves unanswered, is answered
with the node id.
"""

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import log, pb, protocomm

_TAG = const("ch_resp")

# esp_rmaker_chal_resp.proto RMakerChRespMsgType and RMakerChRespStatus
_CMD_CHALLENGE_RESPONSE = const(0)
_RESP_CHALLENGE_RESPONSE = const(1)
_CMD_GET_NODE_ID = const(2)
_RESP_GET_NODE_ID = const(3)
_CMD_DISABLE = const(4)
_RESP_DISABLE = const(5)
_SUCCESS = const(0)
_INVALID_PARAM = const(2)
_DISABLED = const(3)

MAX_CHALLENGE = const(256)
_FIRST_PRINTABLE = const(0x21)
_LAST_PRINTABLE = const(0x7E)


def valid_challenge(challenge):
    """Whether `challenge` (bytes) is one a cloud issues: 1..MAX_CHALLENGE bytes of printable ASCII, no space."""
    if not 0 < len(challenge) <= MAX_CHALLENGE:
        return False
    for byte in challenge:
        if byte < _FIRST_PRINTABLE or byte > _LAST_PRINTABLE:
            return False
    return True


class ChallengeResponse:
    """The endpoint's handler: `handle(session_id, request, may_block) -> response bytes` (protocomm's
    contract). `private_key` is the node's P-256 scalar, loaded by the main task (rmnode.p256_key.load_key) before
    any request:
    nothing here waits, so it may run in a BLE IRQ handler (docs/protocol.md 1.2)."""

    def __init__(self, node_id, private_key):
        self.node_id = node_id
        self._key = private_key
        self.disabled = False

    def load_signer(self):
        """Load the signer now (main task), not at the first challenge: for a transport whose requests come from an
        IRQ handler."""
        from rmnode import p256  # noqa: F401

    def handle(self, session_id, request, may_block):
        if self.disabled:
            return pb.encode(pb.RMakerChRespPayload, {"msg": _RESP_CHALLENGE_RESPONSE, "status": _DISABLED})
        req = pb.decode(pb.RMakerChRespPayload, request)
        msg = req["msg"]
        if msg == _CMD_DISABLE:
            self.disabled = True
            log.info(_TAG, "disabled until the next boot")
            return pb.encode(pb.RMakerChRespPayload, {"msg": _RESP_DISABLE, "status": _SUCCESS})
        if msg == _CMD_GET_NODE_ID:
            return pb.encode(pb.RMakerChRespPayload, {"msg": _RESP_GET_NODE_ID, "status": _SUCCESS,
                                                      "respGetNodeIDPayload": {"node_id": self.node_id}})
        if msg != _CMD_CHALLENGE_RESPONSE:
            raise protocomm.RequestRejected("ch_resp: unsupported msg %d" % msg)
        cmd = req["cmdChallengeResponsePayload"]
        challenge = cmd["payload"] if cmd is not None else b""
        if not valid_challenge(challenge):
            log.warning(_TAG, "challenge of %d bytes refused: not 1..%d printable ASCII characters without spaces"
                        % (len(challenge), MAX_CHALLENGE))
            return pb.encode(pb.RMakerChRespPayload, {"msg": _RESP_CHALLENGE_RESPONSE, "status": _INVALID_PARAM})
        # loaded at the first challenge, not with the endpoint: its 5.8 KB of heap are then paid only by a node that
        # is asked to sign (a request of the largest size, docs/protocol.md 1.1, beside it did not fit a 110 KiB heap). Over BLE it is loaded before
        # (load_signer): an import interns names, and the unix port, which has no GIL, must not do that in the IRQ
        # handler's thread while the main task runs (on an ESP32 the handler holds the GIL, and the VFS reader keeps
        # it: MICROPY_READER_VFS).
        from rmnode import p256

        signature = p256.sign(self._key, challenge)
        log.info(_TAG, "challenge of %d bytes signed" % len(challenge))
        return pb.encode(pb.RMakerChRespPayload, {
            "msg": _RESP_CHALLENGE_RESPONSE, "status": _SUCCESS,
            "respChallengeResponsePayload": {"payload": signature, "node_id": self.node_id}})
