"""The local broker: real mosquitto, mutual TLS, per-node ACLs, and a lifecycle the crash tests can drive."""

import os
import socket
import ssl

import paho.mqtt.client as paho
import pytest

from rmkit.broker import Broker, BrokerError
from rmkit.pki import Pki


def _client(pki, identity, port, client_id=None):
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id or identity.name)
    client.tls_set(ca_certs=str(pki.ca_pem), certfile=str(identity.cert_pem), keyfile=str(identity.key_pem))
    client.connect("localhost", port)
    client.loop_start()
    return client


def _publish(client, topic, payload):
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(10)
    assert info.is_published()


def test_node_publishes_on_its_own_topic_and_cloud_reads_it(pki, broker, subscriber):
    cloud = subscriber(broker, "cloud")
    node = _client(pki, pki.node_identity("nodeA"), broker.port)
    try:
        _publish(node, "node/nodeA/user/mapping", b"{}")
        assert cloud.wait_for_topic("node/nodeA/user/mapping") == [b"{}"]
    finally:
        node.disconnect()
        node.loop_stop()


def test_node_cannot_publish_on_another_nodes_topic(pki, broker, subscriber):
    harness = subscriber(broker)
    node = _client(pki, pki.node_identity("nodeA"), broker.port)
    try:
        _publish(node, "node/nodeB/user/mapping", b"forged")
        _publish(node, "$aws/rules/esp_user_node_mapping/node/nodeB/user/mapping", b"forged")
        # the same connection's next, allowed message arrives: the forged ones were dropped, not delayed
        _publish(node, "node/nodeA/config", b"ok")
        harness.wait_for_topic("node/nodeA/config")
    finally:
        node.disconnect()
        node.loop_stop()
    assert [t for t, _ in harness.messages] == ["node/nodeA/config"]
    log = broker.log_text()
    assert "Denied PUBLISH from nodeA" in log and "'node/nodeB/user/mapping'" in log


def test_identity_is_the_certificate_not_the_client_id(pki, broker, subscriber):
    harness = subscriber(broker)
    node = _client(pki, pki.node_identity("nodeA"), broker.port, client_id="nodeB")
    try:
        _publish(node, "node/nodeB/user/mapping", b"forged")
        _publish(node, "node/nodeA/config", b"ok")
        harness.wait_for_topic("node/nodeA/config")
    finally:
        node.disconnect()
        node.loop_stop()
    assert harness.payloads("node/nodeB/user/mapping") == []


def test_basic_ingest_topic_form_is_allowed_for_the_own_node(pki, broker, subscriber):
    harness = subscriber(broker)
    node = _client(pki, pki.node_identity("nodeA"), broker.port)
    topic = "$aws/rules/esp_user_node_mapping/node/nodeA/user/mapping"
    try:
        _publish(node, topic, b"{}")
        assert harness.wait_for_topic(topic) == [b"{}"]
    finally:
        node.disconnect()
        node.loop_stop()


def _tls_handshake_and_read(pki, port, certificate=None):
    """Open TLS (optionally with a client cert) and send an MQTT CONNECT; returns the reply bytes."""
    context = ssl.create_default_context(cafile=str(pki.ca_pem))
    if certificate is not None:
        context.load_cert_chain(str(certificate.cert_pem), str(certificate.key_pem))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"\x10\x12\x00\x04MQTT\x04\x02\x00\x3c\x00\x06nodeXX")
            return tls.recv(16)


def test_a_client_without_certificate_is_refused(pki, broker):
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _tls_handshake_and_read(pki, broker.port)


def test_a_client_certificate_from_another_ca_is_refused(pki, broker, tmp_path):
    foreign = Pki(tmp_path / "foreign").node_identity("nodeA")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _tls_handshake_and_read(pki, broker.port, foreign)
    # the same request with our CA's certificate gets a CONNACK (so the refusal above is about the CA)
    assert _tls_handshake_and_read(pki, broker.port, pki.node_identity("nodeXX")) == b"\x20\x02\x00\x00"


def test_restart_keeps_the_port_and_kill_is_immediate(broker, pki, subscriber):
    port = broker.port
    subscriber(broker)  # a live connection leaves TIME_WAIT sockets behind on the port
    broker.restart()
    assert broker.port == port and broker.running
    assert _tls_handshake_and_read(pki, port, pki.node_identity("nodeXX")) == b"\x20\x02\x00\x00"
    pid = broker.pid
    broker.kill()
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    broker.start()
    assert broker.port == port


def test_start_on_a_taken_port_is_a_clear_error(broker_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(BrokerError, match="in use"):
            broker_factory(port=taken.getsockname()[1]).start()


def test_broken_config_reports_mosquittos_message(tmp_path):
    missing = Broker(Pki(tmp_path / "p2"), tmp_path / "b2")
    missing.pki.ca_pem.unlink()  # mosquitto cannot load the CA file
    with pytest.raises(BrokerError, match="exited"):
        missing.start()
    missing.stop()


def test_broker_cli_help_explains():
    from rmkit.__main__ import build_parser
    help_text = build_parser()._subparsers._group_actions[0].choices["broker"].format_help()
    assert "client certificates" in " ".join(help_text.split()) and "--port" in help_text


@pytest.mark.parametrize("victim", ["nodeB", "cloud"])
def test_a_certificate_cannot_take_another_clients_id(pki, broker, subscriber, victim):
    """Node A's certificate asking for node B's (or the cloud's) client id gets its own, nodeA: the
    victim stays connected and keeps working."""
    if victim == "cloud":
        watcher = subscriber(broker, "cloud")  # the cloud's identity, reading every node's topics
        victim_client, victim_drops = watcher.client, []
        watcher.client.on_disconnect = lambda *args: victim_drops.append(args)
    else:
        watcher = subscriber(broker)
        victim_client = _client(pki, pki.node_identity("nodeB"), broker.port)
        victim_drops = []
        victim_client.on_disconnect = lambda *args: victim_drops.append(args)
    intruder = _client(pki, pki.node_identity("nodeA"), broker.port, client_id=victim)
    try:
        _publish(intruder, "node/nodeA/config", b"intruder")  # it is connected, as itself
        watcher.wait_for_topic("node/nodeA/config")
        if victim == "nodeB":
            _publish(victim_client, "node/nodeB/config", b"still here")
            assert watcher.wait_for_topic("node/nodeB/config") == [b"still here"]
        else:
            node_c = _client(pki, pki.node_identity("nodeC"), broker.port)
            _publish(node_c, "node/nodeC/config", b"to the cloud")
            assert watcher.wait_for_topic("node/nodeC/config") == [b"to the cloud"]
            node_c.disconnect()
            node_c.loop_stop()
        assert victim_drops == []
    finally:
        intruder.disconnect()
        intruder.loop_stop()
        if victim == "nodeB":
            victim_client.disconnect()
            victim_client.loop_stop()
    log = broker.log_text()
    assert f"as nodeA (p2" in log and f"Client {victim} already connected" not in log
