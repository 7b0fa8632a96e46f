"""The cloud's MQTT side against real mosquitto with mutual TLS: both topic forms, drops, restarts, two instances."""

import dataclasses
import logging
import sqlite3
import time

import pytest

from support.fixtures_cloud import PASSWORD, ApiClient, db_snapshot, database_write_locked
from support.wait import wait_until
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


def test_two_instances_on_one_database_each_get_every_publish_and_confirm_once(cloud_process_factory, cloud_broker):
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
    assert sum(log.count("-> confirmed (node report)") for log in logs) == 4  # never twice
    # plain subscriptions: both instances get every publish, and for each one of them applies it
    wait_until(lambda: sum(log.count("repeated mapping publish ignored") for log in (first.log_text(), second.log_text()))
               == 4, what="the second copy of each publish to be ignored")


# ---------------------------------------------------------------- persistent session: nothing is lost
# A node clears its pending mapping when the broker's PUBACK arrives (firmware/rmnode/online_reports.py), so
# what the broker acknowledged while no cloud was connected must still reach the cloud.

def mqtt_cloud_process(factory, cloud_broker, **options):
    return factory(broker_port=cloud_broker.port, pki_dir=cloud_broker.pki_dir, **options)


def user_of(cloud):
    user_id = cloud.add_user("user@example.com")
    api = ApiClient(cloud.base_url)
    return api, user_id, api.login("user@example.com")["accesstoken"]


def test_mapping_published_while_the_cloud_is_down_confirms_after_its_restart(cloud_process_factory, cloud_broker):
    cloud = mqtt_cloud_process(cloud_process_factory, cloud_broker)
    api, user_id, token = user_of(cloud)
    request_id = api.put_mapping(token, NODE, "key-1").body["request_id"]
    client_id = cloud.client_id
    cloud.stop()
    # the node's side of the bargain: QoS 1 and the broker's PUBACK (publish_mapping asserts it)
    cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": user_id, "secret_key": "key-1"})
    cloud.start()
    assert cloud.client_id == client_id  # the same deployment resumes the same session
    poll_status(api, token, request_id, "confirmed")
    assert api.nodes(token) == [NODE]
    assert "(resumed session)" in cloud.log_text()


def test_node_first_on_basic_ingest_while_the_cloud_is_down_is_kept(cloud_process_factory, cloud_broker):
    cloud = mqtt_cloud_process(cloud_process_factory, cloud_broker)
    api, user_id, token = user_of(cloud)
    cloud.stop()
    cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": user_id, "secret_key": "key-1", "reset": True},
                                 topic=f"$aws/rules/esp_user_node_mapping/node/{NODE}/user/mapping")
    cloud.start()
    wait_until(lambda: f"node {NODE} reported a mapping" in cloud.log_text(), what="the queued report")
    request_id = api.put_mapping(token, NODE, "key-1").body["request_id"]
    assert api.mapping_status(token, request_id).body["request_status"] == "confirmed"


def test_queued_publish_arriving_after_the_request_timed_out_does_not_confirm(cloud_process_factory, cloud_broker):
    timeout = 2.0
    cloud = mqtt_cloud_process(cloud_process_factory, cloud_broker, mapping_timeout=timeout)
    api, user_id, token = user_of(cloud)
    request_id = api.put_mapping(token, NODE, "key-1").body["request_id"]
    cloud.stop()
    cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": user_id, "secret_key": "key-1"})
    time.sleep(timeout + 0.5)  # time passing on purpose: the window passes while the publish waits at the broker
    cloud.start()
    # the publish did arrive (so "timedout" below is the decision, not a lost message) ...
    wait_until(lambda: "node report came after the timeout" in cloud.log_text(), what="the late report")
    assert api.mapping_status(token, request_id).body["request_status"] == "timedout"
    assert api.nodes(token) == []


def test_crash_between_receipt_and_commit_gets_the_publish_again(cloud_process_factory, cloud_broker):
    cloud = mqtt_cloud_process(cloud_process_factory, cloud_broker)
    api, user_id, token = user_of(cloud)
    request_id = api.put_mapping(token, NODE, "key-1").body["request_id"]
    client_id = cloud.client_id
    with database_write_locked(cloud.db_path):
        cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": user_id, "secret_key": "key-1"})
        wait_until(lambda: cloud_broker.sent_to(client_id), what="mosquitto to hand the publish to the cloud")
        cloud.kill()  # received, stuck before its commit
    assert "-> confirmed" not in cloud.log_text()
    cloud.start()
    poll_status(api, token, request_id, "confirmed")
    redelivered = cloud_broker.sent_to(client_id)[1:]
    assert redelivered and "(d1, q1" in redelivered[0], cloud_broker.sent_to(client_id)


def test_publish_the_storage_refuses_is_retried_not_acknowledged(mqtt_cloud, cloud_broker, user, caplog):
    # paho acks after on_message by default, even when applying failed; SQLite gives up after its
    # 10 s busy timeout here, so the first attempt fails while the lock is held
    api, user_id, token = user
    caplog.set_level(logging.INFO, logger="rmkit.cloud")
    request_id = api.put_mapping(token, NODE, "key-1").body["request_id"]
    with database_write_locked(mqtt_cloud.storage.path):
        cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": user_id, "secret_key": "key-1"})
        wait_until(lambda: "not applied yet; retrying" in caplog.text, timeout=20, what="the refused attempt")
        assert not [line for line in cloud_broker.broker.log_text().splitlines()
                    if f"Received PUBACK from {mqtt_cloud.client_id}" in line]
    poll_status(api, token, request_id, "confirmed")
    wait_until(lambda: f"Received PUBACK from {mqtt_cloud.client_id}" in cloud_broker.broker.log_text(),
               what="the ack after the commit")


def test_each_instance_slot_has_its_own_identity_and_a_restart_resumes_it(tmp_path, cloud_broker):
    """The broker binds the client id to the certificate, so each instance's session is its identity:
    slot 0 is `cloud`, slot 1 `cloud-1`; a restarted instance takes the free slot (and session) back."""
    db = tmp_path / "cloud.db"
    started = []

    def start():
        service = CloudService(db, port=0, mqtt=cloud_broker.mqtt_settings()).start()
        started.append(service)
        return service

    try:
        first, second = start(), start()
        assert (first.client_id, second.client_id) == ("cloud", "cloud-1")
        assert second.subscriber.settings.cert_pem.name == "cloud-1.crt.pem"
        first.stop()
        assert start().client_id == "cloud"
        log = cloud_broker.broker.log_text()
        assert "New client connected from 127.0.0.1" in log and " as cloud-1 " in log
    finally:
        for service in started:
            service.stop()


def two_instances_with_requests(factory, cloud_broker, count):
    """Two cloud processes on one database, and `count` mapping requests (nodes NODE0.., key-1)."""
    first = mqtt_cloud_process(factory, cloud_broker, log_name="cloud-1.log")
    second = mqtt_cloud_process(factory, cloud_broker, log_name="cloud-2.log")
    api, user_id, token = user_of(first)
    nodes = [f"{NODE}{i}" for i in range(count)]
    request_ids = [api.put_mapping(token, node_id, "key-1").body["request_id"] for node_id in nodes]
    return first, second, api, user_id, token, nodes, request_ids


def publish_from_each(cloud_broker, nodes, user_id):
    for node_id in nodes:
        cloud_broker.publish_mapping(node_id, {"node_id": node_id, "user_id": user_id, "secret_key": "key-1"})


def test_an_instance_that_was_down_gets_what_was_published_meanwhile_when_back(cloud_process_factory, cloud_broker):
    # each instance's persistent session queues every publish while it is away
    first, second, api, user_id, token, nodes, request_ids = two_instances_with_requests(
        cloud_process_factory, cloud_broker, 4)
    second.stop()
    offset = len(second.log_text())
    publish_from_each(cloud_broker, nodes, user_id)
    for request_id in request_ids:
        poll_status(api, token, request_id, "confirmed")  # the first instance alone confirms them all
    second.start()
    wait_until(lambda: second.log_text()[offset:].count("repeated mapping publish ignored") == 4,
               what="the queued copies to reach the instance that was down")
    assert sorted(api.nodes(token)) == nodes


def test_two_instances_given_one_certificate_say_so(tmp_path, cloud_broker, caplog):
    # the files of one identity given as is (no PKI to pick a slot's identity from): one session
    caplog.set_level(logging.INFO, logger="rmkit.cloud")
    settings = dataclasses.replace(cloud_broker.mqtt_settings(), pki_dir=None, client_id="cloud")
    first = CloudService(tmp_path / "cloud.db", port=0, mqtt=settings).start()
    try:
        second = CloudService(tmp_path / "cloud.db", port=0, mqtt=settings).start()
        try:
            wait_until(lambda: "keeps dropping session cloud" in caplog.text, timeout=20,
                       what="the session takeover to be logged")
        finally:
            second.stop()
    finally:
        first.stop()


# ---------------------------------------------------------------- broker restarts: what it acked arrives
# The broker saves the cloud's session (its subscriptions) to disk, so a publish it acknowledges after
# a restart is queued for the cloud even when no cloud is connected yet.

def restart_broker(cloud_broker, how: str) -> None:
    if how == "SIGKILL":
        cloud_broker.broker.kill()
    else:
        cloud_broker.broker.stop()
    cloud_broker.broker.start()


@pytest.mark.parametrize("how", ["SIGKILL", "graceful"])
def test_a_mapping_published_right_after_a_broker_restart_reaches_the_cloud(how, cloud_process_factory, cloud_broker):
    cloud = mqtt_cloud_process(cloud_process_factory, cloud_broker)
    api, user_id, token = user_of(cloud)
    request_id = api.put_mapping(token, NODE, "key-1").body["request_id"]
    cloud.stop()  # so that the node's publish surely comes before the cloud is back
    restart_broker(cloud_broker, how)
    cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": user_id, "secret_key": "key-1"})
    cloud.start()
    poll_status(api, token, request_id, "confirmed")
    assert api.nodes(token) == [NODE]


@pytest.mark.parametrize("how", ["SIGKILL", "graceful"])
def test_a_mapping_published_while_the_cloud_reconnects_after_a_broker_restart_is_confirmed(
        how, cloud_process_factory, cloud_broker):
    cloud = mqtt_cloud_process(cloud_process_factory, cloud_broker)
    api, user_id, token = user_of(cloud)
    request_id = api.put_mapping(token, NODE, "key-1").body["request_id"]
    restart_broker(cloud_broker, how)  # the cloud keeps running and reconnects by itself (1 s backoff)
    cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": user_id, "secret_key": "key-1"})
    poll_status(api, token, request_id, "confirmed", timeout=40)


def test_broker_and_cloud_restarted_together_lose_nothing(cloud_process_factory, cloud_broker):
    cloud = mqtt_cloud_process(cloud_process_factory, cloud_broker)
    api, user_id, token = user_of(cloud)
    request_id = api.put_mapping(token, NODE, "key-1").body["request_id"]
    cloud.kill()
    cloud_broker.broker.kill()
    cloud_broker.broker.start()
    cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": user_id, "secret_key": "key-1"})
    cloud.start()
    poll_status(api, token, request_id, "confirmed")


def test_two_instances_lose_nothing_across_a_broker_restart_with_one_of_them_down(cloud_process_factory, cloud_broker):
    first, second, api, user_id, token, nodes, request_ids = two_instances_with_requests(
        cloud_process_factory, cloud_broker, 3)
    first.stop()
    second.stop()
    restart_broker(cloud_broker, "SIGKILL")
    publish_from_each(cloud_broker, nodes, user_id)
    second.start()  # only one of the two comes back: its own session has every publish
    api_two = ApiClient(second.base_url)
    for request_id in request_ids:
        poll_status(api_two, token, request_id, "confirmed")
    assert second.log_text().count("-> confirmed (node report)") == 3


def confirmed_requests(db_path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT COUNT(*) FROM mapping_requests WHERE status = 'confirmed'").fetchone()[0]
    finally:
        conn.close()


def test_a_backlog_beyond_mosquittos_default_queue_limit_is_confirmed_in_full(cloud_process_factory, cloud_broker):
    """mosquitto queues at most 1000 messages per client by default and drops the rest: the broker the
    harness runs must not, or mappings the nodes already had a PUBACK for would be lost."""
    backlog = 1200
    cloud = mqtt_cloud_process(cloud_process_factory, cloud_broker, mapping_timeout=300)
    api, user_id, token = user_of(cloud)
    for i in range(backlog):
        api.put_mapping(token, NODE, f"key-{i}")
    cloud.stop()
    cloud_broker.publish_mappings(NODE, [{"node_id": NODE, "user_id": user_id, "secret_key": f"key-{i}"}
                                         for i in range(backlog)])
    cloud.start()
    wait_until(lambda: confirmed_requests(cloud.db_path) == backlog, timeout=120,
               what=f"all {backlog} queued mappings to be confirmed")
