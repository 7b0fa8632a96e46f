"""User-node mapping decisions of the local cloud: both orders, timeout, mismatch, remove, reset, bad node publishes.

The node side is fed straight into the service's ingestion path here (what the MQTT subscriber calls);
test_cloud_mqtt.py does the same through the real broker.
"""

import json
import logging
import time

import pytest

from support.fixtures_cloud import PASSWORD, ApiClient, db_snapshot
from rmkit.cloud import CloudService

NODE = "NODE0A1B2C"


class Scenario:
    """One cloud, one logged-in user, helpers that read like the flow's steps."""

    def __init__(self, service: CloudService, email: str = "user@example.com"):
        self.service = service
        self.api = ApiClient(service.base_url)
        self.user_id = service.add_user(email, PASSWORD)
        self.token = self.api.login(email)["accesstoken"]

    def client_requests(self, secret_key: str, node_id: str = NODE) -> str:
        resp = self.api.put_mapping(self.token, node_id, secret_key, user_id=self.user_id)
        assert resp.status == 200, resp.text
        return resp.body["request_id"]

    def node_publishes(self, secret_key: str, user_id=None, node_id: str = NODE, reset=None):
        payload = {"node_id": node_id, "user_id": user_id or self.user_id, "secret_key": secret_key}
        if reset is not None:
            payload["reset"] = reset
        return self.service.mapping.ingest(node_id, json.dumps(payload).encode())

    def status(self, request_id: str) -> str:
        resp = self.api.mapping_status(self.token, request_id)
        assert resp.status == 200, resp.text
        return resp.body["request_status"]

    def nodes(self) -> list:
        return self.api.nodes(self.token)


class Clock:
    """The cloud's clock in these tests: time passes when the test says so (no sleeping past a timeout)."""

    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_cloud(tmp_path, clock):
    services = []

    def make(mapping_timeout: float = 60.0) -> CloudService:
        service = CloudService(tmp_path / "cloud.db", port=0, mapping_timeout=mapping_timeout, clock=clock).start()
        services.append(service)
        return service

    try:
        yield make
    finally:
        for service in services:
            service.stop()


@pytest.fixture
def flow(make_cloud):
    return Scenario(make_cloud())


@pytest.fixture
def short_flow(make_cloud):
    return Scenario(make_cloud(mapping_timeout=0.6))


# ------------------------------------------------------------------------------------ matching

def test_client_first_then_node_confirms(flow):
    request_id = flow.client_requests("key-1")
    assert flow.status(request_id) == "requested"
    flow.node_publishes("key-1")
    assert flow.status(request_id) == "confirmed"
    assert flow.nodes() == [NODE]


def test_node_first_then_client_confirms(flow):
    flow.node_publishes("key-1")
    request_id = flow.client_requests("key-1")
    assert flow.status(request_id) == "confirmed"
    assert flow.nodes() == [NODE]


def test_mismatched_secret_never_confirms(short_flow, clock):
    flow = short_flow
    request_id = flow.client_requests("key-client")
    flow.node_publishes("key-node")
    assert flow.status(request_id) == "requested"
    clock.advance(0.8)
    assert flow.status(request_id) == "timedout"
    assert flow.nodes() == []


def test_node_publishing_another_user_does_not_confirm(make_cloud):
    service = make_cloud()
    alice, bob = Scenario(service, "alice@example.com"), Scenario(service, "bob@example.com")
    request_id = alice.client_requests("key-1")
    alice.node_publishes("key-1", user_id=bob.user_id)  # node was given bob's id with alice's key
    assert alice.status(request_id) == "requested"
    assert alice.nodes() == [] and bob.nodes() == []


def test_request_times_out_and_a_late_publish_does_not_confirm_it(short_flow, clock):
    flow = short_flow
    request_id = flow.client_requests("key-1")
    clock.advance(0.8)
    flow.node_publishes("key-1")  # arrives after the window
    assert flow.status(request_id) == "timedout"
    assert flow.nodes() == []


def test_timedout_is_persisted_not_recomputed(short_flow, clock):
    flow = short_flow
    request_id = flow.client_requests("key-1")
    clock.advance(0.8)
    assert flow.status(request_id) == "timedout"
    with flow.service.storage.transaction() as tx:
        assert tx.mapping_request(request_id).status == "timedout"


def test_node_publish_older_than_the_timeout_does_not_confirm(short_flow, clock):
    flow = short_flow
    flow.node_publishes("key-1")
    clock.advance(0.8)
    request_id = flow.client_requests("key-1")
    assert flow.status(request_id) == "requested"
    assert flow.nodes() == []


def test_remove_operation_removes_the_node(flow):
    flow.node_publishes("key-1")
    flow.client_requests("key-1")
    resp = flow.api.put_mapping(flow.token, NODE, "", operation="remove", user_id=flow.user_id)
    assert resp.status == 200 and resp.body["request_id"]
    assert flow.status(resp.body["request_id"]) == "confirmed"
    assert flow.nodes() == []


def test_reset_publish_removes_previous_owner_then_maps_new_one(make_cloud):
    service = make_cloud()
    alice, bob = Scenario(service, "alice@example.com"), Scenario(service, "bob@example.com")
    alice.node_publishes("key-a")
    alice.client_requests("key-a")
    assert alice.nodes() == [NODE]
    request_id = bob.client_requests("key-b")
    bob.node_publishes("key-b", reset=True)  # docs/protocol.md 5.3: new owner, drop previous permissions
    assert bob.status(request_id) == "confirmed"
    assert alice.nodes() == [] and bob.nodes() == [NODE]


def test_factory_reset_dummy_publish_removes_associations(flow):
    flow.node_publishes("key-1")
    flow.client_requests("key-1")
    outcome = flow.node_publishes("failed", user_id="esp-rmaker", reset=True)  # docs/protocol.md 5.3 USER_RESET_ID
    assert outcome.removed_users == [flow.user_id]
    assert flow.nodes() == []


def test_factory_reset_after_node_publish_voids_that_publish(flow):
    flow.node_publishes("key-1")
    flow.node_publishes("failed", user_id="esp-rmaker", reset=True)
    request_id = flow.client_requests("key-1")
    assert flow.status(request_id) == "requested"
    assert flow.nodes() == []


def test_repeated_identical_publishes_are_harmless(flow):
    request_id = flow.client_requests("key-1")
    first = flow.node_publishes("key-1", reset=True)
    again = flow.node_publishes("key-1", reset=True)  # QoS1 redelivery must not reset again
    assert first.confirmed_requests and again.duplicate
    assert flow.status(request_id) == "confirmed"
    assert flow.nodes() == [NODE]


def test_republish_with_reset_of_the_same_run_keeps_the_new_association(flow):
    request_id = flow.client_requests("key-1")
    flow.node_publishes("key-1")
    again = flow.node_publishes("key-1", reset=True)  # same provisioning run, reset flag now set
    assert again.duplicate and again.removed_users == []
    assert flow.status(request_id) == "confirmed"
    assert flow.nodes() == [NODE]


def test_second_client_request_for_same_node_publish_also_confirms(flow):
    flow.node_publishes("key-1")
    first, second = flow.client_requests("key-1"), flow.client_requests("key-1")
    assert flow.status(first) == flow.status(second) == "confirmed"
    assert flow.nodes() == [NODE]


# ------------------------------------------------------------------------ bad node publishes

BAD_NODE_PAYLOADS = {
    "not_json": b"node_id=NODE0A1B2C",
    "nested_past_the_recursion_limit": b"[" * 1024,
    "not_utf8": b"\xff\xfe{}",
    "not_an_object": b'["NODE0A1B2C", "user", "key"]',
    "missing_node_id": {"user_id": "{user}", "secret_key": "key-1"},
    "missing_user_id": {"node_id": NODE, "secret_key": "key-1"},
    "missing_secret_key": {"node_id": NODE, "user_id": "{user}"},
    "user_id_not_string": {"node_id": NODE, "user_id": 42, "secret_key": "key-1"},
    "secret_key_not_string": {"node_id": NODE, "user_id": "{user}", "secret_key": ["key-1"]},
    "reset_not_boolean": {"node_id": NODE, "user_id": "{user}", "secret_key": "key-1", "reset": "true"},
    "secret_key_too_long": {"node_id": NODE, "user_id": "{user}", "secret_key": "k" * 129},
    "empty_user_id": {"node_id": NODE, "user_id": "", "secret_key": "key-1"},
    "node_id_of_another_node": {"node_id": "OTHERNODE", "user_id": "{user}", "secret_key": "key-1"},
}


@pytest.mark.parametrize("case", sorted(BAD_NODE_PAYLOADS))
def test_bad_node_publish_is_dropped_and_changes_nothing(flow, caplog, case):
    request_id = flow.client_requests("key-1")
    payload = BAD_NODE_PAYLOADS[case]
    if isinstance(payload, dict):
        payload = json.dumps({k: (flow.user_id if v == "{user}" else v) for k, v in payload.items()}).encode()
    before = db_snapshot(flow.service.storage.path)
    caplog.set_level(logging.INFO, logger="rmkit.cloud.mapping")
    assert flow.service.mapping.ingest(NODE, payload) is None
    assert f"dropped mapping publish for node '{NODE}'" in caplog.text
    assert db_snapshot(flow.service.storage.path) == before
    assert flow.status(request_id) == "requested"


def test_dropped_publish_log_does_not_show_the_secret(flow, caplog):
    caplog.set_level(logging.DEBUG)
    payload = {"node_id": "OTHERNODE", "user_id": flow.user_id, "secret_key": "do-not-log-me"}
    flow.service.mapping.ingest(NODE, json.dumps(payload).encode())
    assert "dropped" in caplog.text and "do-not-log-me" not in caplog.text
