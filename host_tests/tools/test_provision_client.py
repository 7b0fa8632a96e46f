"""rmkit.provision against a reference node (host crypto + Google protobuf) behind the firmware's HTTP server."""

import hashlib
import socket

import pytest

from rmkit.net import free_port
from rmkit.proto import pb
from rmkit.provision import (DeviceUnreachable, HandshakeFailed, HttpTransport, MappingRefused, Provisioner,
                             TransportError, WifiJoinFailed)
from rmkit.provision.security import Security1
from rmkit.provision.transport import parse_host


def provisioner(served, **kwargs):
    transport = HttpTransport("127.0.0.1", served.port, timeout=10)
    kwargs.setdefault("poll_interval_s", 0.01)
    return transport, Provisioner(transport, **kwargs)


@pytest.mark.parametrize("sec_ver, pop", [(0, None), (1, "abcd1234")])
def test_full_sequence(reference_node_factory, sec_ver, pop):
    served = reference_node_factory(sec_ver=sec_ver, pop=pop or "")
    transport, client = provisioner(served, sec=sec_ver, pop=pop)
    with transport:
        result = client.provision("HomeNet", "right-pass", "user-1", "secret-1")
    assert result.node_id == "NODE0123456789"
    assert result.sec_ver == sec_ver
    assert result.wifi.state == "Connected" and result.wifi.ip4_addr == "127.0.0.42"
    assert result.wifi.ssid == "HomeNet" and result.wifi.bssid == "02:00:00:00:00:01"
    assert served.node.mapping == ("user-1", "secret-1")
    assert served.node.wifi_config == ("HomeNet", "right-pass")
    # docs/protocol.md 2.3 order: mapping before any Wi-Fi data; one session (cookie kept) for everything
    endpoints = [endpoint for _, endpoint in served.node.requests]
    assert endpoints[:1] == ["proto-ver"]
    assert endpoints.index("cloud_user_assoc") < endpoints.index("prov-config")
    assert len({session for session, _ in served.node.requests}) == 1


def test_wrong_pop_fails_the_handshake_and_the_right_one_then_works(reference_node_factory):
    served = reference_node_factory(sec_ver=1, pop="abcd1234")
    transport, client = provisioner(served, sec=1, pop="wrong-pop")
    with transport:
        with pytest.raises(HandshakeFailed, match="PoP"):
            client.start_session()
    transport, client = provisioner(served, sec=1, pop="abcd1234")
    with transport:
        client.start_session()
        assert client.set_user_mapping("user-1", "secret-1") == "NODE0123456789"


def test_node_with_a_different_pop_is_detected_by_the_client(reference_node_factory, monkeypatch):
    # the node accepts our proof but proves a different key: the client's own check must catch it
    served = reference_node_factory(sec_ver=1, pop="abcd1234")
    node = served.node
    original = node._session

    def lying_session(session_id, body):
        response = pb.SessionData.FromString(original(session_id, body))
        if response.sec1.WhichOneof("payload") == "sr1":
            response.sec1.sr1.device_verify_data = bytes(32)
        return response.SerializeToString()

    monkeypatch.setattr(node, "_session", lying_session)
    transport, client = provisioner(served, sec=1, pop="abcd1234")
    with transport:
        with pytest.raises(HandshakeFailed, match="verify data"):
            client.start_session()


def test_wifi_auth_error_then_reset_and_retry(reference_node_factory):
    served = reference_node_factory(sec_ver=1, pop="abcd1234")
    transport, client = provisioner(served, sec=1, pop="abcd1234")
    with transport:
        with pytest.raises(WifiJoinFailed) as failure:
            client.provision("HomeNet", "wrong-pass", "user-1", "secret-1")
        assert (failure.value.state, failure.value.reason) == ("ConnectionFailed", "AuthError")
        assert "wrong-pass" not in str(failure.value)
        client.reset_wifi()
        assert served.node.wifi_config is None
        client.set_wifi_config("HomeNet", "right-pass")
        client.apply_wifi_config()
        assert client.wait_for_wifi("HomeNet").state == "Connected"


def test_network_not_found(reference_node_factory):
    served = reference_node_factory(sec_ver=0)
    transport, client = provisioner(served, sec=0)
    with transport, pytest.raises(WifiJoinFailed) as failure:
        client.provision("NoSuchNet", "whatever1", "user-1", "secret-1")
    assert failure.value.reason == "NetworkNotFound"


def test_still_connecting_after_the_wifi_timeout(reference_node_factory):
    served = reference_node_factory(sec_ver=0, connecting_polls=10**6)
    transport, client = provisioner(served, sec=0, wifi_timeout_s=0.2)
    with transport, pytest.raises(WifiJoinFailed, match="still Connecting"):
        client.provision("HomeNet", "right-pass", "user-1", "secret-1")


def test_mapping_refused(reference_node_factory):
    served = reference_node_factory(sec_ver=1, pop="abcd1234")
    transport, client = provisioner(served, sec=1, pop="abcd1234")
    with transport:
        with pytest.raises(MappingRefused) as refused:
            client.provision("HomeNet", "right-pass", "refuse-me", "secret-1")
    assert (refused.value.status, refused.value.status_name) == (1, "InvalidParam")
    assert served.node.wifi_config is None  # nothing about Wi-Fi was sent after the refusal


def test_scan_pages_through_results(reference_node_factory):
    networks = {f"Net{i:02d}": "pass-%d" % i for i in range(7)}
    served = reference_node_factory(sec_ver=1, pop="abcd1234", networks=networks)
    transport, client = provisioner(served, sec=1, pop="abcd1234")
    with transport:
        client.start_session()
        results = client.scan_wifi(page_size=3)
    assert [r.ssid for r in results] == sorted(networks)
    assert results[0].auth == "WPA2_PSK" and results[0].rssi == -40


def test_explicit_security_is_never_downgraded(reference_node_factory):
    served = reference_node_factory(sec_ver=0)
    transport, client = provisioner(served, sec=1, pop="abcd1234")
    with transport, pytest.raises(HandshakeFailed, match="Security 0"):
        client.start_session()
    assert all(endpoint == "proto-ver" for _, endpoint in served.node.requests)


def test_auto_security_follows_the_node(reference_node_factory):
    served = reference_node_factory(sec_ver=1, pop="")  # Security 1 without PoP: proto-ver lists no_pop
    transport, client = provisioner(served, sec=None, pop="ignored")
    with transport:
        client.start_session()
        assert client.set_user_mapping("u", "k") == "NODE0123456789"


def test_local_validation_sends_nothing(reference_node_factory):
    served = reference_node_factory(sec_ver=0)
    transport, client = provisioner(served, sec=0)
    with transport:
        with pytest.raises(ValueError, match="SSID"):
            client.provision("S" * 33, "p", "u", "k")
        with pytest.raises(ValueError, match="passphrase"):
            client.provision("S", "p" * 65, "u", "k")
        with pytest.raises(ValueError, match="user id"):
            client.provision("S", "p", "", "k")
    assert served.node.requests == []


def test_unreachable_node():
    port = free_port()
    with pytest.raises(DeviceUnreachable, match=f"127.0.0.1:{port}"):
        HttpTransport("127.0.0.1", port, timeout=5)


def test_node_closing_the_connection_is_a_transport_error():
    # a listener that accepts and closes at once: connection lost, not a hang
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        transport = HttpTransport("127.0.0.1", listener.getsockname()[1], timeout=5)
        conn, _ = listener.accept()
        conn.close()
        with pytest.raises(TransportError, match="proto-ver"):
            Provisioner(transport, sec=0).proto_ver()
        transport.close()


def test_security1_keystream_matches_spec_3_3():
    """Client Security1 against a hand-run device computation: verify data and the continued stream."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    device_key = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    device_pubkey = device_key.public_key().public_bytes_raw()
    device_random = bytes(range(100, 116))
    state = {}

    def exchange(request: bytes) -> bytes:
        message = pb.SessionData.FromString(request)
        assert message.sec_ver == 1
        if message.sec1.WhichOneof("payload") == "sc0":
            assert message.sec1.msg == 0 and request[:4] == bytes.fromhex("10015a25")  # msg omitted (docs/protocol.md 3.1)
            client_pubkey = message.sec1.sc0.client_pubkey
            shared = device_key.exchange(X25519PublicKey.from_public_bytes(client_pubkey))
            key = bytes(a ^ b for a, b in zip(shared, hashlib.sha256(b"1234").digest()))
            keystream = Cipher(algorithms.AES(key), modes.CTR(device_random)).encryptor().update(bytes(128))
            state.update(client_pubkey=client_pubkey, keystream=keystream)
            reply = pb.SessionData(sec_ver=1)
            reply.sec1.msg = 1
            reply.sec1.sr0.device_pubkey = device_pubkey
            reply.sec1.sr0.device_random = device_random
            return reply.SerializeToString()
        keystream = state["keystream"]
        # bytes 0-31 encrypt the device public key
        assert message.sec1.sc1.client_verify_data == bytes(a ^ b for a, b in zip(device_pubkey, keystream[:32]))
        reply = pb.SessionData(sec_ver=1)
        reply.sec1.msg = 3
        reply.sec1.sr1.device_verify_data = bytes(a ^ b for a, b in zip(state["client_pubkey"], keystream[32:64]))
        return reply.SerializeToString()

    security = Security1("1234")
    security.handshake(exchange)
    # later payloads continue at offset 64, both directions on one stream
    keystream = state["keystream"]
    assert security.encrypt(b"\x00" * 10) == keystream[64:74]
    assert security.decrypt(b"\x00" * 6) == keystream[74:80]


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("localhost", ("localhost", 80)),
    ("[::1]:81", ("::1", 81)),
])
def test_parse_host(text, expected):
    assert parse_host(text) == expected


@pytest.mark.parametrize("text", ["", ":80", "127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:http"])
def test_parse_host_rejects(text):
    with pytest.raises(ValueError):
        parse_host(text)
