"""The firmware MQTT client (rmnode.mqtt) against a broker that breaks MQTT 3.1.1: a header announcing 256 MiB,
packet types a client never receives, reserved flag bits, a second CONNACK, malformed lengths. Each ends that
connection at once, before any body is read; the client reconnects with its backoff, reaches the real broker
behind (mosquitto, through support.hostile_broker) and publishes. Under CPython, case by case, and on the
MicroPython unix port, every case in a row in one node process, where reading a 256 MiB body would have
raised MemoryError.
"""

import asyncio
import re

import pytest

from rmnode import mqtt  # firmware/ on sys.path: host_tests/firmware/conftest.py

from support.fixtures_mqtt import make_flash, read_state
from support.hostile_broker import CONNACK, HostileBroker

# PUBLISH, Remaining Length 268435455, and the first bytes of that body: a client that reads the body as
# asyncio's readexactly does (stream.read(n) once data is there) allocates 256 MiB at the first byte
ANNOUNCES_256_MIB = b"\x30\xff\xff\xff\x7f" + b"\x00\x05topic" + bytes(64)
REFUSED_256_MIB = r"packet 0x30 of 268435455 bytes: more than the 2 this client reads"

# name: (what the hostile broker answers a CONNECT with, the reason the client gives for hanging up)
VIOLATIONS = {
    "256 MiB PUBLISH announced after CONNACK": (CONNACK + ANNOUNCES_256_MIB, REFUSED_256_MIB),
    "256 MiB PUBLISH announced instead of CONNACK": (ANNOUNCES_256_MIB, REFUSED_256_MIB),
    "PUBLISH to a node that subscribes to nothing": (CONNACK + b"\x30\x05\x00\x01tab",
                                                     r"packet 0x30 of 5 bytes: more than the 2"),
    "PINGREQ": (CONNACK + b"\xc0\x00", r"packet 0xc0 of 0 bytes: a type never sent to a client"),
    "DISCONNECT": (CONNACK + b"\xe0\x00", r"packet 0xe0 of 0 bytes: a type never sent to a client"),
    "SUBSCRIBE": (CONNACK + b"\x82\x00", r"packet 0x82 of 0 bytes: a type never sent to a client"),
    "reserved type 0": (CONNACK + b"\x00\x00", r"packet 0x00 of 0 bytes: a type never sent to a client"),
    "reserved type 15": (CONNACK + b"\xf0\x00", r"packet 0xf0 of 0 bytes: a type never sent to a client"),
    "CONNECT instead of CONNACK": (b"\x10\x00", r"packet 0x10 of 0 bytes: a type never sent to a client"),
    "PUBACK with reserved flags": (CONNACK + b"\x42\x02\x00\x01", r"packet 0x42 of \d bytes: reserved flags"),
    "PINGRESP with reserved flags": (CONNACK + b"\xd1\x00", r"packet 0xd1 of \d bytes: reserved flags"),
    "CONNACK with reserved flags": (b"\x21\x02\x00\x00", r"packet 0x21 of \d bytes: reserved flags"),
    "PUBLISH with QoS 3": (CONNACK + b"\x36\x02\x00\x00", r"packet 0x36 of \d bytes: reserved flags"),
    "CONNACK with reserved acknowledge flags": (b"\x20\x02\x02\x00", r"CONNACK with reserved flags 0x02"),
    "a second CONNACK": (CONNACK + CONNACK, r"a second CONNACK"),
    "PUBACK of 3 bytes": (CONNACK + b"\x40\x03\x00\x01\x00", r"packet 0x40 of 3 bytes: malformed"),
    "PINGRESP with a body": (CONNACK + b"\xd0\x01\x00", r"packet 0xd0 of 1 bytes: malformed"),
    "CONNACK of 3 bytes": (b"\x20\x03\x00\x00\x00", r"packet 0x20 of 3 bytes: malformed"),
    "Remaining Length in 5 bytes": (CONNACK + b"\xd0\x80\x80\x80\x80\x01", r"malformed remaining length"),
    "PUBREL, a QoS 2 packet the node never asked for": (CONNACK + b"\x62\x02\x00\x01", r"unexpected packet 0x62"),
}
# The unix port's heap for the node process: what an ESP32_GENERIC's grown GC heap holds, in 64-bit bytes
# (README "Memory": 112000 B x 1.4); the firmware's sources are compiled in it too
NODE_HEAP = "160K"
HANG_UP_S = 5.0  # the client hangs up at once; this only bounds a slow machine


def _client(pki, port, node_id="nodeA"):
    identity = pki.node_identity(node_id)
    context = mqtt.make_ssl_context(str(identity.cert_pem), str(identity.key_pem), str(pki.ca_pem))
    return mqtt.MQTTClient(node_id, "localhost", port, ssl_context=context, keepalive_s=30, backoff_ms=(50, 100),
                           connect_timeout_ms=20000, stable_ms=1000)


@pytest.fixture
def hostile_broker(pki, broker):
    """Factory: hostile_broker(scripts) -> HostileBroker in front of the test's mosquitto; stopped at teardown."""
    made = []

    def make(scripts) -> HostileBroker:
        made.append(HostileBroker(pki, broker.port, scripts).start())
        return made[-1]

    yield make
    for hostile in made:
        hostile.stop()


@pytest.mark.parametrize("script, reason", VIOLATIONS.values(), ids=VIOLATIONS.keys())
def test_a_protocol_violation_ends_the_connection_and_the_client_publishes_after_reconnecting(
        pki, broker, subscriber, hostile_broker, capsys, script, reason):
    harness = subscriber(broker)
    hostile = hostile_broker([script])
    client = _client(pki, hostile.port)

    async def scenario():
        runner = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.publish("node/nodeA/config", "after"), 20)
        finally:
            await client.close()
            runner.cancel()

    asyncio.run(scenario())
    refused, piped = hostile.wait_served(2)
    assert refused.connect_seen and refused.hung_up_after_s is not None, refused.error
    assert refused.hung_up_after_s < HANG_UP_S
    assert piped.script is None and client.connects >= 1
    assert harness.wait_for_topic("node/nodeA/config") == [b"after"]
    out = capsys.readouterr().out
    assert re.search(r"mqtt: (connection lost|connect failed): MQTTError\(" + reason, out), out


def test_the_node_survives_every_violation_in_a_row_on_the_unix_port_without_memory_error(
        pki, broker, subscriber, hostile_broker, node_runner, tmp_path):
    """The node's online sequence (launch_mqtt_node.py) on the MicroPython unix port, where reading a 256 MiB
    body allocates it first: it meets every hostile answer in turn, then the real broker, and maps."""
    harness = subscriber(broker)
    hostile = hostile_broker([script for script, _ in VIOLATIONS.values()])
    settings = {"mqtt_backoff_ms": [100, 200], "mqtt_keepalive_s": 10, "mqtt_connect_timeout_ms": 5000}
    flash = make_flash(tmp_path / "flash", pki, "HOSTILE00001", hostile.port, pending=("user-9", "secret-9"),
                       settings=settings)
    # a bounded heap, as a board has (the unix port's own grows without bound and would take the 256 MiB)
    node = node_runner(flash, env={"RMNODE_TEST_EXIT_MAPPED": "1"}, heap=NODE_HEAP)
    node.wait_for("TEST mapped", timeout=60)
    served = hostile.wait_served(len(VIOLATIONS) + 1)
    for (name, (_, reason)), connection in zip(VIOLATIONS.items(), served):
        assert connection.connect_seen and connection.hung_up_after_s is not None, (name, connection.error)
        assert connection.hung_up_after_s < HANG_UP_S, name
    reasons = [m.group(1) for m in node.wait_for(r"mqtt: (?:connection lost|connect failed): (MQTTError\(.*\));",
                                                    count=len(VIOLATIONS))]
    for (name, (_, reason)), logged in zip(VIOLATIONS.items(), reasons):
        assert re.search(reason, logged), (name, logged)
    assert "MemoryError" not in node.output()
    assert harness.wait_for_topic("node/HOSTILE00001/user/mapping") == [
        b'{"node_id":"HOSTILE00001","user_id":"user-9","secret_key":"secret-9","reset":true}']
    assert read_state(flash) == {"mapped_user_id": "user-9"}
