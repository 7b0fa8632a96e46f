"""The node's online sequence on the MicroPython unix port against real mosquitto with mutual TLS."""

import json
import re

from support.fixtures_mqtt import make_flash, read_state
from support.wait import wait_until

NODE = "A1B2C3D4E5F6"
MAPPING_TOPIC = f"node/{NODE}/user/mapping"
CONFIG_TOPIC = f"node/{NODE}/config"
MAPPING_JSON = b'{"node_id":"A1B2C3D4E5F6","user_id":"user-42","secret_key":"s3cr3t-key-0001","reset":true}'


def test_config_then_exact_mapping_then_cleared(pki, broker, subscriber, node_runner, tmp_path):
    harness = subscriber(broker)
    flash = make_flash(tmp_path / "flash", pki, NODE, broker.port, pending=("user-42", "s3cr3t-key-0001"))
    node = node_runner(flash)
    harness.wait_for_topic(MAPPING_TOPIC)
    topics = [t for t, _ in harness.messages]
    assert topics == [CONFIG_TOPIC, MAPPING_TOPIC]
    config = json.loads(harness.payloads(CONFIG_TOPIC)[0])
    assert config["node_id"] == NODE and config["info"]["fw_version"] and config["info"]["platform"] == "linux"
    assert harness.payloads(MAPPING_TOPIC) == [MAPPING_JSON]
    node.wait_for(r"mapping: mapping for user user-42 acknowledged")
    assert read_state(flash) == {"mapped_user_id": "user-42"}
    out = node.output()
    for line in ("connecting to localhost", "connected in", "published " + MAPPING_TOPIC, "acked msg id"):
        assert line in out
    assert "s3cr3t" not in out and "abcd1234" not in out


def test_broker_down_at_start_retries_with_growing_delays(pki, broker_factory, subscriber, node_runner, tmp_path):
    broker = broker_factory()  # not started yet
    flash = make_flash(tmp_path / "flash", pki, NODE, broker.port, pending=("user-42", "s3cr3t-key-0001"))
    node = node_runner(flash)
    retries = node.wait_for(r"connect failed: .*; retry in (\d+) ms", count=3)
    delays = [int(m.group(1)) for m in retries[:3]]
    assert delays == sorted(delays) and delays[2] > delays[0], delays
    broker.start()
    harness = subscriber(broker)
    assert harness.wait_for_topic(MAPPING_TOPIC) == [MAPPING_JSON]
    node.wait_for(r"acknowledged, pending cleared")
    assert "pending_mapping" not in read_state(flash)


def test_broker_killed_before_puback_delivers_after_return_and_only_then_clears(
        pki, broker, subscriber, node_runner, tmp_path):
    flash = make_flash(tmp_path / "flash", pki, NODE, broker.port, pending=("user-42", "s3cr3t-key-0001"))
    net, release = tmp_path / "net-up", tmp_path / "release"
    net.touch()
    node = node_runner(flash, env={"RMNODE_TEST_NET_FILE": str(net), "RMNODE_TEST_PAUSE_FILE": str(release)})
    node.wait_for("TEST paused before mapping publish")
    broker.pause()  # the broker gets the PUBLISH into its socket but never answers
    release.touch()
    node.wait_for("published " + re.escape(MAPPING_TOPIC))
    net.unlink()  # hold the node off while the broker is replaced, so the harness is subscribed first
    broker.kill()
    node.wait_for(r"connection lost")
    assert read_state(flash)["pending_mapping"]["user_id"] == "user-42"  # not cleared without PUBACK
    broker.start()
    harness = subscriber(broker)
    net.touch()
    assert harness.wait_for_topic(MAPPING_TOPIC) == [MAPPING_JSON]
    node.wait_for(r"acknowledged, pending cleared")
    assert read_state(flash) == {"mapped_user_id": "user-42"}
    assert re.search(rf"Received PUBLISH from {NODE} \(d1, q1, r0, m\d+, '{MAPPING_TOPIC}'", broker.log_text())
    assert "dup)" in node.output()


def test_node_killed_before_puback_publishes_again_after_restart(pki, broker, subscriber, node_runner, tmp_path):
    harness = subscriber(broker)
    flash = make_flash(tmp_path / "flash", pki, NODE, broker.port, pending=("user-42", "s3cr3t-key-0001"))
    release = tmp_path / "release"
    node = node_runner(flash, env={"RMNODE_TEST_PAUSE_FILE": str(release)})
    node.wait_for("TEST paused before mapping publish")
    broker.pause()
    release.touch()
    node.wait_for("published " + re.escape(MAPPING_TOPIC))
    node.kill()  # power cut before the PUBACK
    assert read_state(flash)["pending_mapping"]["user_id"] == "user-42"
    broker.resume()
    # the broker may still deliver what reached its socket; count only what the restarted board sends
    wait_until(lambda: f"Client {NODE} closed its connection" in broker.log_text()
               or re.search(rf"Client {NODE} .*disconnect", broker.log_text()) is not None, what="broker saw the cut")
    before = len(harness.payloads(MAPPING_TOPIC))
    restarted = node_runner(flash)
    harness.wait_for_topic(MAPPING_TOPIC, count=before + 1)
    assert harness.payloads(MAPPING_TOPIC)[-1] == MAPPING_JSON
    restarted.wait_for(r"acknowledged, pending cleared")
    assert read_state(flash) == {"mapped_user_id": "user-42"}


def test_wifi_loss_waits_for_the_station_then_publishes(pki, broker, subscriber, node_runner, tmp_path):
    harness = subscriber(broker)
    flash = make_flash(tmp_path / "flash", pki, NODE, broker.port, pending=("user-42", "s3cr3t-key-0001"))
    net = tmp_path / "net-up"
    node = node_runner(flash, env={"RMNODE_TEST_NET_FILE": str(net)})
    node.wait_for("waiting for network")
    assert NODE not in broker.log_text()
    net.touch()
    assert harness.wait_for_topic(MAPPING_TOPIC) == [MAPPING_JSON]
    net.unlink()
    node.wait_for(r"connection lost: network down")
    node.wait_for("waiting for network")
    net.touch()
    harness.wait_for_topic(CONFIG_TOPIC, count=2)  # config again on the new connection (docs/protocol.md 5.4)
    assert harness.payloads(MAPPING_TOPIC) == [MAPPING_JSON]  # the mapping was acked: not sent again


def test_factory_reset_while_online_publishes_reset_mapping(pki, broker, subscriber, node_runner, tmp_path):
    harness = subscriber(broker)
    flash = make_flash(tmp_path / "flash", pki, NODE, broker.port, mapped_user_id="user-42")
    node = node_runner(flash, mode="reset")
    node.wait_for("TEST factory reset finished, reported=True")
    assert node.wait_exit() == 0
    assert harness.wait_for_topic(MAPPING_TOPIC) == [
        b'{"node_id":"A1B2C3D4E5F6","user_id":"esp-rmaker","secret_key":"failed","reset":true}']
    assert read_state(flash) == {}


def test_basic_ingest_prefix_publishes_on_aws_rules_topics(pki, broker, subscriber, node_runner, tmp_path):
    harness = subscriber(broker)
    flash = make_flash(tmp_path / "flash", pki, NODE, broker.port, pending=("user-42", "s3cr3t-key-0001"),
                       topic_prefix="$aws/rules/esp_user_node_mapping/")
    node_runner(flash)
    topic = f"$aws/rules/esp_user_node_mapping/node/{NODE}/user/mapping"
    assert harness.wait_for_topic(topic) == [MAPPING_JSON]
    assert harness.payloads(f"$aws/rules/esp_node_config/node/{NODE}/config")
