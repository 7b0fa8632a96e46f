"""The local broker: real mosquitto, mutual TLS, per-node ACLs, and a lifecycle the crash tests can drive."""

import json
import os
import socket
import ssl
import subprocess
import sys

import paho.mqtt.client as paho
import pytest

from support.needs import need_user_namespaces

from rmkit.broker import Broker, BrokerError, config_text, exposure_warnings
from rmkit.pki import Pki
from support.paths import VENV_BIN

RMKIT = VENV_BIN / "rmkit"  # messages name the venv's programs by path: they work when pasted


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


# -- listening where a real board can reach it -------------------------------------------------------

def test_the_listen_address_goes_into_the_config_and_local_clients_use_loopback(pki, tmp_path):
    everywhere = Broker(pki, tmp_path / "b1", port=18883, listen="0.0.0.0")
    assert (everywhere.listen, everywhere.host) == ("0.0.0.0", "127.0.0.1")
    text = config_text(18883, pki.ca_pem, everywhere.identity, tmp_path / "acl", tmp_path / "log", everywhere.listen)
    assert "listener 18883 0.0.0.0" in text.splitlines()
    assert Broker(pki, tmp_path / "b2", port=18883, listen="192.168.1.20").host == "192.168.1.20"
    assert Broker(pki, tmp_path / "b3", port=18883).listen == "127.0.0.1"  # the default stays
    assert "listener 18883 127.0.0.1" in config_text(18883, pki.ca_pem, everywhere.identity, tmp_path / "acl",
                                                     tmp_path / "log").splitlines()


@pytest.mark.parametrize("bad", ["localhost", "192.168.1", "::", "0.0.0.0:8883", "eth0"])
def test_a_listen_address_that_is_no_ipv4_address_is_one_line(tmp_path, bad):
    for command in (["broker", f"--listen={bad}"], ["sandbox", "--no-board", f"--broker-listen={bad}"]):
        result = subprocess.run([sys.executable, "-m", "rmkit", *command, "--workdir", str(tmp_path / "w")],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        knob = "--listen" if command[0] == "broker" else "--broker-listen (make cloud BROKER_LISTEN=)"
        assert result.stderr.strip().splitlines() == [
            f"rmkit {command[0]}: {knob} {bad!r}: give an IPv4 address of this machine: 127.0.0.1 (the default, this "
            "machine only), 0.0.0.0 (every interface) or one interface's address"]
    assert not (tmp_path / "w").exists()


def test_listening_beyond_loopback_warns_that_the_network_can_reach_it(tmp_path):
    pki = Pki(tmp_path / "pki")
    default = pki.broker_identity().certificate()
    assert exposure_warnings("127.0.0.1", 8883, default) == []
    assert exposure_warnings("0.0.0.0", 8883, default) == [
        "warning: the broker listens on every interface of this machine (port 8883): other machines on your network "
        "can reach it (each still needs a client certificate from this PKI)",
        f"warning: its certificate names only localhost and 127.0.0.1: a board refuses it; run `{RMKIT} pki init "
        "--broker-host <this machine's LAN address or name>` and restart"]
    assert exposure_warnings("192.168.1.20", 8883, default)[1] == (
        "warning: its certificate does not name 192.168.1.20 (localhost, 127.0.0.1): a board connecting there "
        f"refuses it; run `{RMKIT} pki init --broker-host 192.168.1.20` and restart")
    named = pki.broker_identity(hosts=["192.168.1.20"]).certificate()
    # once the certificate names an address a board can use, only the first warning stays
    assert exposure_warnings("192.168.1.20", 8883, named) == [
        "warning: the broker listens on 192.168.1.20 (port 8883): other machines on your network can reach it (each "
        "still needs a client certificate from this PKI)"]
    assert len(exposure_warnings("0.0.0.0", 8883, named)) == 1


# Runs inside `unshare -rn` (a network namespace of its own, where this process is root): 10.9.8.7 stands
# for the computer's LAN address. A board-like TLS client (node certificate, host name checked) reaches
# `rmkit broker --listen 10.9.8.7` and `rmkit sandbox --no-board --broker-listen 0.0.0.0` there.
IN_NAMESPACE = r"""
import json, signal, socket, ssl, subprocess, sys, time
from pathlib import Path
work = Path(sys.argv[1])
rmkit = [sys.executable, "-m", "rmkit"]
LAN = "10.9.8.7"
result = {}

def connack(port, host=LAN):
    pki = work / "pki"
    context = ssl.create_default_context(cafile=str(pki / "ca" / "ca.crt.pem"))
    context.load_cert_chain(str(pki / "nodes" / "NODE1" / "NODE1.crt.pem"), str(pki / "nodes" / "NODE1" / "NODE1.key.pem"))
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05NODE1")
            return tls.recv(4).hex()

def until(proc, marker):
    for line in proc.stdout:
        if marker in line:
            return line
    raise SystemExit("no %r: %s" % (marker, proc.stderr.read()))

subprocess.run(rmkit + ["pki", "--dir", str(work / "pki"), "init", "--broker-host", LAN], check=True, capture_output=True)
subprocess.run(rmkit + ["pki", "--dir", str(work / "pki"), "node", "NODE1"], check=True, capture_output=True)

broker = subprocess.Popen(rmkit + ["broker", "--listen", LAN, "--port", "18883", "--pki-dir", str(work / "pki"),
                                   "--workdir", str(work / "broker")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
result["broker_line"] = until(broker, "broker: listening").strip()
result["broker_connack"] = connack(18883)
try:
    connack(18883, "127.0.0.1")
    result["loopback"] = "reached"
except OSError as exc:
    result["loopback"] = type(exc).__name__
broker.send_signal(signal.SIGINT)
result["broker_stderr"] = broker.communicate(timeout=30)[1].strip().splitlines()

sandbox = subprocess.Popen(rmkit + ["sandbox", "--no-board", "--broker-listen", "0.0.0.0", "--broker-port", "18884",
                                    "--pki-dir", str(work / "pki"), "--workdir", str(work / "sb")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
result["sandbox"] = json.loads(until(sandbox, "SANDBOX ").split(" ", 1)[1])
result["sandbox_connack"] = connack(18884)
sandbox.terminate()
result["sandbox_stderr"] = sandbox.communicate(timeout=30)[1].strip().splitlines()

# one address only: the local cloud connects there too, so the certificate must name it; a PKI of the
# sandbox's own (no --pki-dir) gets it named, a given one that does not is refused before anything starts
subprocess.run(rmkit + ["pki", "--dir", str(work / "pki2"), "init"], check=True, capture_output=True)
refused = subprocess.run(rmkit + ["sandbox", "--no-board", "--broker-listen", LAN, "--broker-port", "18885",
                                  "--pki-dir", str(work / "pki2"), "--workdir", str(work / "sb2")],
                         capture_output=True, text=True, timeout=60)
result["refused"] = [refused.returncode, refused.stderr.strip().splitlines()]
own = subprocess.Popen(rmkit + ["sandbox", "--no-board", "--broker-listen", LAN, "--broker-port", "18886",
                                "--workdir", str(work / "sb3")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
result["own"] = json.loads(until(own, "SANDBOX ").split(" ", 1)[1])
own.terminate()
own.communicate(timeout=30)
print("RESULT " + json.dumps(result))
"""


@pytest.mark.board  # a sandbox's board, in a namespace of its own
def test_a_board_on_the_network_reaches_the_broker_on_the_address_it_listens_on(tmp_path):
    need_user_namespaces()
    script = ("ip link set lo up && ip addr add 10.9.8.7/32 dev lo && exec \"$0\" -c \"$1\" \"$2\"")
    proc = subprocess.run(["unshare", "-rn", "sh", "-c", script, sys.executable, IN_NAMESPACE, str(tmp_path)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["broker_line"] == ("broker: listening on 10.9.8.7:18883 (mutual TLS; certificate for localhost, "
                                     "127.0.0.1, 10.9.8.7)")
    assert result["broker_connack"] == "20020000"  # TLS with the host name checked, then CONNACK accepted
    assert result["loopback"] == "ConnectionRefusedError"  # it listens where it was told, nowhere else
    assert result["broker_stderr"] == [
        "broker: warning: the broker listens on 10.9.8.7 (port 18883): other machines on your network can reach it "
        "(each still needs a client certificate from this PKI)"]
    assert result["sandbox"]["broker"] == "127.0.0.1:18884" and result["sandbox"]["broker_listen"] == "0.0.0.0"
    assert result["sandbox"]["pki"] == str(tmp_path / "pki")
    assert result["sandbox_connack"] == "20020000"
    assert result["refused"] == [2, [
        f"rmkit sandbox: the broker certificate in {tmp_path / 'pki2'} does not name 10.9.8.7, where the local cloud "
        f"connects: run `{RMKIT} pki --dir {tmp_path / 'pki2'} init --broker-host 10.9.8.7` first"]]
    assert result["own"]["broker"] == "10.9.8.7:18886"  # the cloud connected there, its certificate checked
    assert result["sandbox_stderr"] == [
        "cloud: warning: the broker listens on every interface of this machine (port 18884): other machines on "
        "your network can reach it (each still needs a client certificate from this PKI)"]
