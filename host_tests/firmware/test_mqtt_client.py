"""The firmware MQTT client (rmnode.mqtt) under CPython against real mosquitto: QoS 1, keepalive, resend, limits.

CPython's ssl reads PEM, so these tests hand PEM paths to the same make_ssl_context the board uses with DER.
"""

import asyncio
import sys

import pytest

from rmnode import mqtt  # firmware/ on sys.path: host_tests/firmware/conftest.py

from support.wait import wait_until


def _client(pki, broker, node_id="nodeA", **kwargs):
    identity = pki.node_identity(node_id)
    context = mqtt.make_ssl_context(str(identity.cert_pem), str(identity.key_pem), str(pki.ca_pem))
    # the client has no defaults for these: the node's come from rmnode.config
    options = dict(keepalive_s=30, backoff_ms=(100, 400), connect_timeout_ms=20000, stable_ms=1000)
    options.update(kwargs)
    return mqtt.MQTTClient(node_id, "localhost", broker.port, ssl_context=context, **options)


async def _with_client(client, scenario):
    runner = asyncio.create_task(client.run())
    try:
        return await asyncio.wait_for(scenario(client), 20)
    finally:
        await client.close()
        runner.cancel()


def test_qos1_publish_returns_after_puback(pki, broker, subscriber):
    harness = subscriber(broker)

    async def scenario(client):
        await client.publish("node/nodeA/user/mapping", '{"x":1}')
        return client.connects, client.last_connect_ms

    connects, connect_ms = asyncio.run(_with_client(_client(pki, broker), scenario))
    assert connects == 1 and connect_ms > 0
    assert harness.wait_for_topic("node/nodeA/user/mapping") == [b'{"x":1}']
    assert "Sending PUBACK to nodeA" in broker.log_text()


def test_node_a_cannot_publish_on_node_b_topic(pki, broker, subscriber):
    harness = subscriber(broker)

    async def scenario(client):
        await client.publish("node/nodeB/user/mapping", "forged")  # 3.1.1: acked, but dropped
        await client.publish("node/nodeA/config", "ok")

    asyncio.run(_with_client(_client(pki, broker), scenario))
    harness.wait_for_topic("node/nodeA/config")
    assert harness.payloads("node/nodeB/user/mapping") == []
    assert "Denied PUBLISH from nodeA" in broker.log_text()


def test_publish_before_the_broker_exists_goes_out_once_it_does(pki, broker_factory, capsys):
    broker = broker_factory()

    async def scenario(client):
        publish = asyncio.create_task(client.publish("node/nodeA/user/mapping", "m"))
        while capsys.readouterr().out.count("retry in") < 1:
            await asyncio.sleep(0.02)
        await asyncio.get_running_loop().run_in_executor(None, broker.start)
        await publish

    asyncio.run(_with_client(_client(pki, broker), scenario))
    assert "(d0, q1" in broker.log_text().split("Received PUBLISH from nodeA", 1)[1]  # first send: no DUP


def test_dead_link_is_detected_by_keepalive_and_reconnected(pki, broker, capsys):
    async def scenario(client):
        await client.wait_connected()
        broker.pause()  # TCP stays up, but no PINGRESP ever comes
        seen = ""
        while "no PINGRESP" not in seen:
            seen += capsys.readouterr().out
            await asyncio.sleep(0.05)
        broker.resume()
        while client.connects < 2:
            await asyncio.sleep(0.05)
        await client.publish("node/nodeA/config", "after")

    asyncio.run(_with_client(_client(pki, broker, keepalive_s=1, ping_timeout_ms=500), scenario))


def test_unacknowledged_publish_is_resent_with_dup_after_reconnect(pki, broker, subscriber, capsys):
    harness = subscriber(broker)
    network = {"up": True}

    async def scenario(client):
        await client.wait_connected()
        broker.pause()
        publish = asyncio.create_task(client.publish("node/nodeA/user/mapping", "m"))
        while "published node/nodeA/user/mapping (msg id 1" not in capsys.readouterr().out:  # sent, not acked
            await asyncio.sleep(0.02)
        network["up"] = False  # keep the client away until the harness listens on the new broker
        subacks = harness.subacks
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, broker.kill)
        await loop.run_in_executor(None, broker.start)
        await loop.run_in_executor(None, harness.wait_resubscribed, subacks)
        network["up"] = True
        await publish

    asyncio.run(_with_client(_client(pki, broker, is_network_up=lambda: network["up"]), scenario))
    assert harness.wait_for_topic("node/nodeA/user/mapping") == [b"m"]
    assert "Received PUBLISH from nodeA (d1, q1, r0, m1, 'node/nodeA/user/mapping'" in broker.log_text()


def test_publish_timeout_is_bounded_and_forgets_the_message(pki, broker):
    async def scenario(client):
        await client.wait_connected()
        broker.pause()
        with pytest.raises(mqtt.MQTTError, match="no PUBACK for msg id 1 on node/nodeA/user/mapping within 300 ms"):
            await client.publish("node/nodeA/user/mapping", "m", timeout_ms=300)
        assert client._outbox == {}
        broker.resume()

    asyncio.run(_with_client(_client(pki, broker), scenario))


def test_close_wakes_a_waiting_publish_with_an_error(pki, broker_factory):
    broker = broker_factory()  # never started: the publish can only wait

    async def scenario(client):
        publish = asyncio.create_task(client.publish("node/nodeA/user/mapping", "m"))
        while not client._outbox:  # the publish is waiting for its PUBACK
            await asyncio.sleep(0.01)
        await client.close()
        with pytest.raises(mqtt.MQTTError, match="client closed before PUBACK"):
            await publish

    asyncio.run(_with_client(_client(pki, broker), scenario))


def test_network_down_means_no_connection_attempt(pki, broker, capsys):
    network = {"up": False, "asked": 0}

    def is_network_up() -> bool:
        network["asked"] += 1
        return network["up"]

    async def scenario(client):
        while network["asked"] < 10:  # the client has looked ten times (50 ms apart) and found no network
            await asyncio.sleep(0.02)
        assert not client.connected and client.connects == 0
        network["up"] = True
        await client.wait_connected(timeout_ms=5000)

    asyncio.run(_with_client(_client(pki, broker, is_network_up=is_network_up), scenario))
    out = capsys.readouterr().out
    assert out.count("waiting for network") == 1 and "network is up" in out
    assert out.index("network is up") < out.index("connecting to")


def test_wrong_ca_is_refused_by_the_client(pki, broker, tmp_path, capsys):
    from rmkit.pki import Pki
    other = Pki(tmp_path / "other")
    identity = pki.node_identity("nodeA")
    context = mqtt.make_ssl_context(str(identity.cert_pem), str(identity.key_pem), str(other.ca_pem))
    client = mqtt.MQTTClient("nodeA", "localhost", broker.port, ssl_context=context, keepalive_s=30,
                             backoff_ms=(100, 200), connect_timeout_ms=20000)

    async def scenario(client):
        while capsys.readouterr().out.count("connect failed") < 1:
            await asyncio.sleep(0.02)
        assert client.connects == 0

    asyncio.run(_with_client(client, scenario))
    wait_until(lambda: "nodeA" not in broker.log_text().split("running", 1)[1], what="no session")
