"""The cloud's MQTT side against real mosquitto with mutual TLS: both topic forms, drops, restarts, two instances."""

import logging

import pytest

from fixtures_cloud import PASSWORD, ApiClient, db_snapshot, wait_until
from rmkit.cloud import CloudService

NODE = "NODE77AA01"


@pytest.fixture
def mqtt_cloud(tmp_path, cloud_broker):
    service = CloudService(tmp_path / "cloud.db", port=0, mapping_timeout=60,
                           mqtt=cloud_broker.mqtt_settings()).start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def user(mqtt_cloud):
    api = ApiClient(mqtt_cloud.base_url)
    user_id = mqtt_cloud.add_user("user@example.com", PASSWORD)
    return api, user_id, api.login("user@example.com")["accesstoken"]


def poll_status(api, token, request_id, want, timeout=10.0):
    return wait_until(lambda: api.mapping_status(token, request_id).body["request_status"] == want,
                      timeout=timeout, what=f"request {request_id} to be {want}")


def reports_of(service, node_id):
    with service.storage.transaction() as tx:
        return tx.node_reports_since(node_id, 0)


def test_client_first_then_node_publish_over_mqtt_confirms(mqtt_cloud, cloud_broker, user):
    api, user_id, token = user
    request_id = api.put_mapping(token, NODE, "key-1").body["request_id"]
    cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": user_id, "secret_key": "key-1"})
    poll_status(api, token, request_id, "confirmed")
    assert api.nodes(token) == [NODE]


def test_node_first_on_basic_ingest_topic_then_client_confirms(mqtt_cloud, cloud_broker, user):
    api, user_id, token = user
    cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": user_id, "secret_key": "key-1", "reset": True},
                                 topic=f"$aws/rules/esp_user_node_mapping/node/{NODE}/user/mapping")
    wait_until(lambda: reports_of(mqtt_cloud, NODE), what="the node's report to be stored")
    request_id = api.put_mapping(token, NODE, "key-1").body["request_id"]
    assert api.mapping_status(token, request_id).body["request_status"] == "confirmed"


def test_publish_naming_another_node_is_dropped(mqtt_cloud, cloud_broker, user, caplog):
    api, user_id, token = user
    caplog.set_level(logging.INFO, logger="rmkit.cloud")
    request_id = api.put_mapping(token, "OTHERNODE", "key-1").body["request_id"]
    before = db_snapshot(mqtt_cloud.storage.path)
    # NODE may only publish on its own topic (broker ACL), so it claims another node id in the payload
    cloud_broker.publish_mapping(NODE, {"node_id": "OTHERNODE", "user_id": user_id, "secret_key": "key-1"})
    wait_until(lambda: "differs from the topic's" in caplog.text, what="the drop to be logged")
    assert db_snapshot(mqtt_cloud.storage.path) == before
    assert api.mapping_status(token, request_id).body["request_status"] == "requested"


def test_non_json_publish_is_dropped_and_the_subscriber_keeps_working(mqtt_cloud, cloud_broker, user, caplog):
    api, user_id, token = user
    caplog.set_level(logging.INFO, logger="rmkit.cloud")
    cloud_broker.publish_mapping(NODE, b"\x00not json at all")
    wait_until(lambda: "payload is not JSON" in caplog.text, what="the drop to be logged")
    request_id = api.put_mapping(token, NODE, "key-2").body["request_id"]
    cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": user_id, "secret_key": "key-2"})
    poll_status(api, token, request_id, "confirmed")


def test_cloud_resubscribes_after_the_broker_restarts(mqtt_cloud, cloud_broker, user):
    api, user_id, token = user
    cloud_broker.broker.restart()
    wait_until(lambda: mqtt_cloud.subscriber.subscribed, timeout=20, what="the cloud to resubscribe")
    request_id = api.put_mapping(token, NODE, "key-1").body["request_id"]
    cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": user_id, "secret_key": "key-1"})
    poll_status(api, token, request_id, "confirmed")


def test_restart_between_put_and_node_publish_still_confirms(cloud_process_factory, cloud_broker):
    cloud = cloud_process_factory(broker_port=cloud_broker.port, pki_dir=cloud_broker.pki_dir)
    user_id = cloud.add_user("user@example.com")
    api = ApiClient(cloud.base_url)
    token = api.login("user@example.com")["accesstoken"]
    request_id = api.put_mapping(token, NODE, "key-1").body["request_id"]
    cloud.restart()
    assert api.mapping_status(token, request_id).body["request_status"] == "requested"
    cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": user_id, "secret_key": "key-1"})
    poll_status(api, token, request_id, "confirmed")
    assert api.nodes(token) == [NODE]
    assert "-> confirmed (node report)" in cloud.log_text()


def test_two_instances_share_one_database_and_one_subscription(cloud_process_factory, cloud_broker):
    first = cloud_process_factory(broker_port=cloud_broker.port, pki_dir=cloud_broker.pki_dir,
                                  log_name="cloud-1.log")
    second = cloud_process_factory(broker_port=cloud_broker.port, pki_dir=cloud_broker.pki_dir,
                                   log_name="cloud-2.log")
    user_id = first.add_user("user@example.com")
    api_one, api_two = ApiClient(first.base_url), ApiClient(second.base_url)
    token = api_one.login("user@example.com")["accesstoken"]  # a token from one works on the other
    request_ids = [api_one.put_mapping(token, f"{NODE}{i}", f"key-{i}").body["request_id"] for i in range(4)]
    for i in range(4):
        node_id = f"{NODE}{i}"
        cloud_broker.pki.node_identity(node_id)
        cloud_broker.publish_mapping(node_id, {"node_id": node_id, "user_id": user_id, "secret_key": f"key-{i}"})
    for request_id in request_ids:
        poll_status(api_two, token, request_id, "confirmed")
    logs = (first.log_text(), second.log_text())
    assert sum(log.count("-> confirmed (node report)") for log in logs) == 4
    # with plain subscriptions both would get every publish and one of them would log the duplicate
    assert not any("repeated mapping publish ignored" in log for log in logs)
