"""Firmware provisioning logic checked against independent host implementations: Google protobuf
(rmkit.proto), `cryptography` X25519/AES-CTR, and a Security 1 client built on them."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from google.protobuf.descriptor import FieldDescriptor

from rmnode import pb, protocomm, x25519
from rmnode.aes_ctr import AESCTR
from rmnode.prov_endpoints import Provisioning
from rmnode.store import Store
from rmkit.proto import pb as gpb
import fwtest

# firmware schema (by name) -> Google message class with the same fields
SCHEMA_NAMES = ["SessionData", "WiFiConfigPayload", "WiFiScanPayload", "WiFiCtrlPayload", "RMakerConfigPayload",
                "RMakerChRespPayload"]
SCHEMAS = [(getattr(pb, name), getattr(gpb, name)) for name in SCHEMA_NAMES]


def _random_value(rng: random.Random, kind: str):
    if kind == "i":
        return rng.choice([0, 1, 2, 3, 7, 127, 128, 300, -1, -40, 2**31 - 1, -2**31])
    if kind == "u":
        return rng.choice([0, 1, 127, 128, 16384, 2**32 - 1])
    if kind == "b":
        return rng.random() < 0.5
    if kind == "y":
        return os.urandom(rng.choice([0, 1, 6, 32, 200]))
    assert kind == "s", kind
    return rng.choice(["", "u1", "üser-ß", "x" * 130])


def _random_message(rng: random.Random, schema: str, depth: int = 0) -> dict:
    msg = {}
    oneof_done = False
    for number, name, kind, sub, flag in pb.fields(schema):
        if rng.random() < 0.4:
            continue
        if kind == "m":
            if flag == "*":
                msg[name] = [_random_message(rng, sub, depth + 1) for _ in range(rng.randrange(3))]
                continue
            if oneof_done and number >= 10:  # payload oneofs use numbers >= 10: one member at most
                continue
            oneof_done = number >= 10
            msg[name] = _random_message(rng, sub, depth + 1)
        elif flag == "?":
            if not oneof_done:
                oneof_done = True
                msg[name] = _random_value(rng, kind)
        else:
            msg[name] = _random_value(rng, kind)
    return msg


def _fill(gmsg, schema: str, msg: dict) -> None:
    for number, name, kind, sub, flag in pb.fields(schema):
        if name not in msg:
            continue
        value = msg[name]
        if kind == "m":
            if flag == "*":
                for item in value:
                    _fill(getattr(gmsg, name).add(), sub, item)
            else:
                getattr(gmsg, name).SetInParent()
                _fill(getattr(gmsg, name), sub, value)
        else:
            setattr(gmsg, name, value)


def _schema_fields_match_google(schema: str, descriptor) -> None:
    """Same numbers, names, kinds, labels and oneof membership as the .proto, recursively."""
    fd = FieldDescriptor
    scalar = {fd.TYPE_INT32: "i", fd.TYPE_ENUM: "i", fd.TYPE_UINT32: "u", fd.TYPE_BOOL: "b", fd.TYPE_BYTES: "y",
              fd.TYPE_STRING: "s", fd.TYPE_MESSAGE: "m"}
    ours = pb.fields(schema)
    assert [f[0] for f in ours] == sorted(f[0] for f in ours), "fields out of number order"
    theirs = {f.number: f for f in descriptor.fields}
    # Sec2 (SessionData.sec2) is deliberately not known to the node: an unknown field to us
    assert set(theirs) - {f[0] for f in ours} <= ({12} if descriptor.name == "SessionData" else set())
    for number, name, kind, sub, flag in ours:
        field = theirs[number]
        assert (field.name, scalar[field.type]) == (name, kind), (descriptor.name, number)
        repeated = field.is_repeated
        assert repeated == (flag == "*"), (descriptor.name, name)
        explicit_oneof = field.containing_oneof is not None and kind != "m"
        assert explicit_oneof == (flag == "?"), (descriptor.name, name)
        if kind == "m":
            _schema_fields_match_google(sub, field.message_type)


@pytest.mark.parametrize("schema,gclass", SCHEMAS, ids=SCHEMA_NAMES)
def test_schema_matches_the_proto(schema, gclass):
    _schema_fields_match_google(schema, gclass.DESCRIPTOR)


@pytest.mark.parametrize("schema,gclass", SCHEMAS, ids=SCHEMA_NAMES)
def test_codec_matches_google_protobuf(schema, gclass):
    rng = random.Random(gclass.DESCRIPTOR.name)
    for _ in range(300):
        msg = _random_message(rng, schema)
        gmsg = gclass()
        _fill(gmsg, schema, msg)
        google_bytes = gmsg.SerializeToString()
        assert pb.encode(schema, msg) == google_bytes, msg
        assert pb.encode(schema, pb.decode(schema, google_bytes)) == google_bytes
        assert gclass.FromString(pb.encode(schema, msg)) == gmsg


def test_golden_vectors_parse_identically_in_google_protobuf():
    for name, schema, data in fwtest.golden_vectors():
        gclass = dict(SCHEMAS)[schema]
        assert gclass.FromString(data).SerializeToString() == data == pb.encode(schema, pb.decode(schema, data)), name


def test_x25519_matches_cryptography():
    for _ in range(50):
        a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        a_raw = a.private_bytes_raw()
        b_pub = b.public_key().public_bytes_raw()
        assert x25519.public_key(a_raw) == a.public_key().public_bytes_raw()
        assert x25519.shared_secret(a_raw, b_pub) == a.exchange(X25519PublicKey.from_public_bytes(b_pub))
        u = os.urandom(31) + bytes([0xFF])  # top bit set and non-canonical values
        assert x25519.scalarmult(a_raw, u) == a.exchange(X25519PublicKey.from_public_bytes(u))


def test_x25519_rfc7748_iteration_1000():
    k = u = bytes.fromhex("09" + "00" * 31)
    for _ in range(1000):
        k, u = x25519.scalarmult(k, u), k
    assert k.hex() == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"


def test_aes_ctr_matches_cryptography_across_split_calls_and_wrap():
    rng = random.Random(7)
    for counter in (os.urandom(16), b"\xff" * 15 + b"\xfe", b"\xff" * 16, bytes(16)):
        key = os.urandom(32)
        data = os.urandom(700)
        expected = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor().update(data)
        ctr = AESCTR(key, counter)
        out, pos = b"", 0
        while pos < len(data):
            size = rng.choice([0, 1, 5, 15, 16, 17, 31, 64, 100])
            out += ctr.crypt(data[pos:pos + size])
            pos += size
        assert out == expected


class CryptographySec1Client:
    """Security 1 client on `cryptography` and Google protobuf only (docs/protocol.md 3.3)."""

    def __init__(self, pop: bytes):
        self.pop = pop
        self.private = X25519PrivateKey.generate()
        self.public = self.private.public_key().public_bytes_raw()

    def handshake(self, dispatch, session_id: int) -> None:
        cmd0 = gpb.SessionData(sec_ver=1)
        cmd0.sec1.sc0.client_pubkey = self.public
        resp0 = gpb.SessionData.FromString(dispatch(session_id, "prov-session", cmd0.SerializeToString()))
        assert resp0.sec_ver == 1 and resp0.sec1.msg == 1 and resp0.sec1.sr0.status == 0
        key = self.private.exchange(X25519PublicKey.from_public_bytes(resp0.sec1.sr0.device_pubkey))
        if self.pop:
            key = bytes(a ^ b for a, b in zip(key, hashlib.sha256(self.pop).digest()))
        self.stream = Cipher(algorithms.AES(key), modes.CTR(resp0.sec1.sr0.device_random)).encryptor()
        cmd1 = gpb.SessionData(sec_ver=1)
        cmd1.sec1.msg = 2
        cmd1.sec1.sc1.client_verify_data = self.stream.update(resp0.sec1.sr0.device_pubkey)
        resp1 = gpb.SessionData.FromString(dispatch(session_id, "prov-session", cmd1.SerializeToString()))
        assert resp1.sec_ver == 1 and resp1.sec1.msg == 3
        assert self.stream.update(resp1.sec1.sr1.device_verify_data) == self.public, "device not verified"

    def call(self, dispatch, session_id: int, endpoint: str, request, response_class):
        body = self.stream.update(request.SerializeToString())
        return response_class.FromString(self.stream.update(dispatch(session_id, endpoint, body)))


def _node(tmp_path, pop="abcd1234", sec_ver=1):
    store = Store(str(tmp_path / "state.json"))
    station = fwtest.FakeStation()
    prov = Provisioning(fwtest.FakeConfig(sec_ver, pop, "node-xyz"), station,
                        lambda user_id, secret_key: store.set("pending_mapping", [user_id, secret_key]))
    return prov, store, station


def test_sec1_sequence_with_independent_client(tmp_path):
    prov, store, station = _node(tmp_path)
    assert json.loads(prov.dispatch(1, "proto-ver", b"---"))["prov"]["sec_ver"] == 1
    client = CryptographySec1Client(b"abcd1234")
    client.handshake(prov.dispatch, 1)
    request = gpb.RMakerConfigPayload()
    request.cmd_set_user_mapping.UserID = "user-1"
    request.cmd_set_user_mapping.SecretKey = "0b5c7c1e-secret"
    reply = client.call(prov.dispatch, 1, "cloud_user_assoc", request, gpb.RMakerConfigPayload)
    assert (reply.msg, reply.resp_set_user_mapping.Status, reply.resp_set_user_mapping.NodeId) == (1, 0, "node-xyz")
    assert Store(store.path).get("pending_mapping") == ["user-1", "0b5c7c1e-secret"]
    set_config = gpb.WiFiConfigPayload(msg=2)
    set_config.cmd_set_config.ssid = b"home"
    set_config.cmd_set_config.passphrase = b"pw123456"
    assert client.call(prov.dispatch, 1, "prov-config", set_config, gpb.WiFiConfigPayload).resp_set_config.status == 0
    applied = client.call(prov.dispatch, 1, "prov-config", gpb.WiFiConfigPayload(msg=4), gpb.WiFiConfigPayload)
    assert applied.msg == 5 and applied.resp_apply_config.status == 0
    assert station.joins == [(b"home", b"pw123456", None)]
    status = gpb.WiFiConfigPayload()
    status.cmd_get_status.SetInParent()
    reply = client.call(prov.dispatch, 1, "prov-config", status, gpb.WiFiConfigPayload)
    assert reply.resp_get_status.sta_state == gpb.WifiStationState.Connecting


def test_sec1_with_rmkit_provisioning_client(tmp_path):
    from rmkit.provision.security import Security1
    prov, store, station = _node(tmp_path)
    client = Security1("abcd1234")
    client.handshake(lambda request: prov.dispatch(3, "prov-session", request))
    request = gpb.RMakerConfigPayload()
    request.cmd_set_user_mapping.UserID = "u"
    request.cmd_set_user_mapping.SecretKey = "k"
    raw = prov.dispatch(3, "cloud_user_assoc", client.encrypt(request.SerializeToString()))
    assert gpb.RMakerConfigPayload.FromString(client.decrypt(raw)).resp_set_user_mapping.NodeId == "node-xyz"


def test_wrong_pop_with_independent_client_then_right_one(tmp_path):
    prov, store, station = _node(tmp_path)
    with pytest.raises(protocomm.HandshakeFailed, match="key mismatch"):
        CryptographySec1Client(b"wrong").handshake(prov.dispatch, 1)
    client = CryptographySec1Client(b"abcd1234")
    client.handshake(prov.dispatch, 2)
    reply = client.call(prov.dispatch, 2, "prov-ctrl", gpb.WiFiCtrlPayload(msg=1), gpb.WiFiCtrlPayload)
    assert (reply.msg, reply.status) == (2, 0)


def test_no_pop_session(tmp_path):
    prov, store, station = _node(tmp_path, pop="")
    assert "no_pop" in json.loads(prov.dispatch(1, "proto-ver", b"no_pop"))["prov"]["cap"]
    CryptographySec1Client(b"").handshake(prov.dispatch, 1)
    assert prov.protocomm.session_established(1)
