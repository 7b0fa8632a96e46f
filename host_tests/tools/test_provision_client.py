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


# --- challenge-response mapping (docs/protocol.md 7.1): the reference node signs, our cloud in-process checks ---

NODE_ID = "NODE0123456789"


def node_key(node_pki, node_id=NODE_ID):
    """The private key of the node certificate `node_pki` issued: what the node signs challenges with."""
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(node_pki.node_identity(node_id).key_pem.read_bytes(), password=None)


@pytest.fixture
def alice_cloud(pki_cloud_service):
    """A CloudClient logged in as alice on the in-process cloud that knows `node_pki`'s nodes."""
    from rmkit.cloud_client import CloudClient
    from support.fixtures_cloud import PASSWORD

    pki_cloud_service.add_user("alice@example.com", PASSWORD)
    cloud = CloudClient(pki_cloud_service.base_url)
    cloud.login("alice@example.com", PASSWORD)
    return cloud


class RecordingCloud:
    """A cloud that issues a given challenge and records what it is asked to verify."""

    def __init__(self, challenge="c" * 64):
        from rmkit.cloud_client import MappingChallenge

        self.issued = MappingChallenge("R1", challenge)
        self.verified = []

    def initiate_mapping(self, timeout_s=360):
        return self.issued

    def verify_mapping(self, request_id, node_id, signature):
        self.verified.append((request_id, node_id, signature))


def test_the_node_signs_a_challenge_with_its_certificate_key(reference_node_factory, node_pki):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    served = reference_node_factory(sec_ver=1, pop="abcd1234", signing_key=node_key(node_pki))
    transport, client = provisioner(served, sec=1, pop="abcd1234")
    with transport:
        client.start_session()
        signed = client.sign_challenge("rmaker-node-auth-challenge")
    assert signed.node_id == NODE_ID
    public_key = node_pki.node_identity(NODE_ID).certificate().public_key()
    public_key.verify(signed.signature, b"rmaker-node-auth-challenge", ec.ECDSA(hashes.SHA256()))


def test_full_sequence_by_challenge_response_maps_the_node_in_the_cloud(reference_node_factory, node_pki,
                                                                        alice_cloud):
    served = reference_node_factory(sec_ver=1, pop="abcd1234", signing_key=node_key(node_pki))
    lines = []
    transport, client = provisioner(served, sec=1, pop="abcd1234", progress=lines.append)
    with transport:
        result = client.provision("HomeNet", "right-pass", mapping="auto", cloud=alice_cloud)
    assert (result.node_id, result.mapping, result.wifi.state) == (NODE_ID, "ch_resp", "Connected")
    assert alice_cloud.mapping_status(result.request_id) == "confirmed"
    assert alice_cloud.nodes() == [NODE_ID]
    # esp-rainmaker-cli's order: proto-ver, prov-session, (initiate), ch_resp, (verify), then Wi-Fi; no cloud_user_assoc
    endpoints = [endpoint for _, endpoint in served.node.requests]
    assert endpoints[:4] == ["proto-ver", "prov-session", "prov-session", "ch_resp"]
    assert "cloud_user_assoc" not in endpoints and set(endpoints[4:]) == {"prov-config"}
    assert served.node.mapping is None and served.node.wifi_config == ("HomeNet", "right-pass")
    assert any("challenge-response (the node offers ch_resp)" in line for line in lines)


def test_an_rsa_node_is_mapped_too(reference_node_factory, node_pki, alice_cloud, tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    from rmkit.pki import node_certificate_path

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_key = serialization.load_pem_private_key((node_pki.directory / "ca" / "ca.key.pem").read_bytes(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "NODERSA01")]))
            .issuer_name(node_pki.ca_certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(ca_key, hashes.SHA256()))
    path = node_certificate_path(node_pki.directory, "NODERSA01")
    path.parent.mkdir(parents=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    served = reference_node_factory(sec_ver=0, node_id="NODERSA01", signing_key=key)
    transport, client = provisioner(served, sec=0)
    with transport:
        assert client.provision("HomeNet", "right-pass", mapping="ch_resp", cloud=alice_cloud).node_id == "NODERSA01"
    assert alice_cloud.nodes() == ["NODERSA01"]


def test_auto_without_a_cloud_uses_the_secret_key_on_a_ch_resp_node(reference_node_factory, node_pki):
    served = reference_node_factory(sec_ver=1, pop="abcd1234", signing_key=node_key(node_pki))
    transport, client = provisioner(served, sec=1, pop="abcd1234")
    with transport:
        result = client.provision("HomeNet", "right-pass", "user-1", "secret-1", mapping="auto")
    assert result.mapping == "secret" and served.node.mapping == ("user-1", "secret-1")
    assert "ch_resp" not in [endpoint for _, endpoint in served.node.requests]


def test_auto_on_a_node_without_ch_resp_uses_the_secret_key(reference_node_factory, alice_cloud):
    served = reference_node_factory(sec_ver=1, pop="abcd1234")
    transport, client = provisioner(served, sec=1, pop="abcd1234")
    with transport:
        result = client.provision("HomeNet", "right-pass", "user-1", "secret-1", mapping="auto", cloud=alice_cloud)
    assert result.mapping == "secret" and served.node.mapping == ("user-1", "secret-1")


def test_ch_resp_forced_on_a_node_that_does_not_offer_it_is_one_error(reference_node_factory, alice_cloud):
    from rmkit.provision import MappingUnavailable

    served = reference_node_factory(sec_ver=1, pop="abcd1234")
    transport, client = provisioner(served, sec=1, pop="abcd1234")
    with transport, pytest.raises(MappingUnavailable, match="does not offer challenge-response"):
        client.provision("HomeNet", "right-pass", mapping="ch_resp", cloud=alice_cloud)
    assert [endpoint for _, endpoint in served.node.requests] == ["proto-ver"]  # decided before any session


def test_a_disabled_node_is_one_error_and_the_cloud_is_not_asked_to_verify(reference_node_factory, node_pki):
    from rmkit.provision import ChallengeDeclined

    served = reference_node_factory(sec_ver=1, pop="abcd1234", signing_key=node_key(node_pki), ch_resp_disabled=True)
    cloud = RecordingCloud()
    transport, client = provisioner(served, sec=1, pop="abcd1234")
    with transport, pytest.raises(ChallengeDeclined) as declined:
        client.provision("HomeNet", "right-pass", mapping="auto", cloud=cloud)
    assert (declined.value.status, declined.value.status_name) == (3, "Disabled")
    assert "\n" not in str(declined.value)
    assert cloud.verified == [] and served.node.wifi_config is None


def test_a_challenge_the_node_will_not_sign_is_invalid_param(reference_node_factory, node_pki):
    from rmkit.provision import ChallengeDeclined

    served = reference_node_factory(sec_ver=0, signing_key=node_key(node_pki))
    cloud = RecordingCloud(challenge="a challenge with spaces")
    transport, client = provisioner(served, sec=0)
    with transport, pytest.raises(ChallengeDeclined, match="InvalidParam.*printable ASCII"):
        client.provision("HomeNet", "right-pass", mapping="ch_resp", cloud=cloud)
    assert served.node.signed == [] and cloud.verified == []


def test_a_verify_the_cloud_refuses_stops_before_wifi(reference_node_factory, node_pki, alice_cloud):
    from rmkit.cloud_client import CloudRefused

    node_pki.node_identity("NODEB0000002")
    # the node names another node's id: the cloud checks with that node's certificate and refuses
    served = reference_node_factory(sec_ver=1, pop="abcd1234", signing_key=node_key(node_pki),
                                    ch_resp_node_id="NODEB0000002")
    transport, client = provisioner(served, sec=1, pop="abcd1234")
    with transport, pytest.raises(CloudRefused, match="refused the node's challenge response.*NODEB0000002") as refused:
        client.provision("HomeNet", "right-pass", mapping="ch_resp", cloud=alice_cloud)
    assert refused.value.error_code == 102007 and "\n" not in str(refused.value)
    assert served.node.wifi_config is None and alice_cloud.nodes() == []


def test_run_flow_takes_challenge_response_when_the_node_offers_it(reference_node_factory, node_pki,
                                                                   pki_cloud_service):
    from rmkit.flow import run_flow
    from rmkit.timeline import Timeline
    from support.fixtures_cloud import PASSWORD

    pki_cloud_service.add_user("alice@example.com", PASSWORD)
    served = reference_node_factory(sec_ver=1, pop="abcd1234", signing_key=node_key(node_pki))
    timeline = Timeline()
    result = run_flow(lambda: HttpTransport("127.0.0.1", served.port, timeout=10), "abcd1234", 1, "HomeNet",
                      "right-pass", pki_cloud_service.base_url, "alice@example.com", PASSWORD, timeline)
    assert (result.status, result.nodes, result.mapping, result.secret_key) == ("confirmed", [NODE_ID], "ch_resp", "")
    texts = [event.text for event in timeline.events]
    assert texts.index("POST user/nodes/mapping/initiate") < texts.index("ch_resp {challenge} [SoftAP]") \
        < texts.index("POST user/nodes/mapping/verify {signature}")
    assert not any(text.startswith("PUT") for text in texts)


def test_the_client_s_request_limit_is_the_node_s():
    # one statement of the limit (firmware/rmnode/http.py MAX_BODY, docs/protocol.md 1.1); the client follows it
    import re

    from rmkit.provision.transport import MAX_REQUEST
    from support.paths import FIRMWARE

    source = (FIRMWARE / "rmnode" / "http.py").read_text()
    assert MAX_REQUEST == int(re.search(r"^MAX_BODY = const\((\d+)\)", source, re.MULTILINE).group(1))
