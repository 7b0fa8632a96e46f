"""What lets the cloud hold many mappings at once, and keeps it correct: reads that never wait for a
writer, cached token checks that still refuse a logged-out or expired token at once (in every REST
process), group commit, and batched ingestion that loses nothing when its inbox is full."""

import sqlite3
import threading
import time

import pytest

from support.fixtures_cloud import PASSWORD, ApiClient, database_write_locked
from support.wait import wait_until
from rmkit.cloud import CloudService
from rmkit.cloud import mqtt as cloud_mqtt
from rmkit.cloud import tokens
from rmkit.cloud.group_commit import GroupCommitter
from rmkit.cloud.storage import Storage

NODE = "NODE5CA1E001"


def logged_in(service, email="user@example.com"):
    user_id = service.add_user(email, PASSWORD)
    api = ApiClient(service.base_url)
    return api, user_id, api.login(email)["accesstoken"]


def test_polls_token_checks_and_node_lists_answer_while_a_write_transaction_is_held_open(cloud_service):
    api, user_id, token = logged_in(cloud_service)
    request_id = api.put_mapping(token, NODE, "key-1").body["request_id"]
    with database_write_locked(cloud_service.storage.path):
        # the token's session is looked up for the first time here: a read, not a write
        status = api.mapping_status(token, request_id)
        assert status.status == 200 and status.body["request_status"] == "requested", status.text
        assert api.request("GET", "/v1/user", token=token).body["user_id"] == user_id
        assert api.nodes(token) == []


def test_a_write_slipped_into_a_read_snapshot_is_refused(tmp_path):
    storage = Storage(tmp_path / "cloud.db")
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            with storage.read() as tx:
                tx.set_meta("written", "by a reader")
        with storage.read() as tx:
            assert tx.get_meta("written") is None
    finally:
        storage.close()


def test_a_logged_out_token_is_refused_at_once_by_every_rest_process(tmp_path):
    with CloudService(tmp_path / "cloud.db", http_processes=2) as service:
        assert len(service.worker_pids()) == 1
        api, _, token = logged_in(service)
        for _ in range(20):  # connections land on either process: both have checked and cached the token
            assert api.request("GET", "/v1/user", token=token).status == 200
        assert api.request("POST", "/v1/logout2?logout_all=false", token=token).status == 200
        refused = [api.request("GET", "/v1/user", token=token) for _ in range(20)]
        assert {(r.status, r.body.get("error_code")) for r in refused} == {(401, 101011)}, [r.text for r in refused]


def test_an_expired_token_is_refused_though_its_session_check_is_cached(cloud_service, monkeypatch):
    api, _, token = logged_in(cloud_service)
    assert api.request("GET", "/v1/user", token=token).status == 200  # checked and cached

    class TwoHoursLater:
        @staticmethod
        def time():
            return time.time() + 7200

    monkeypatch.setattr(tokens, "time", TwoHoursLater)
    expired = api.request("GET", "/v1/user", token=token)
    assert (expired.status, expired.body["error_code"]) == (401, 101012), expired.text


def test_a_new_login_after_a_logout_is_served_while_the_old_token_stays_refused(cloud_service):
    api, _, old = logged_in(cloud_service)
    api.request("GET", "/v1/user", token=old)
    api.request("POST", "/v1/logout2?logout_all=false", token=old)
    new = api.login("user@example.com")["accesstoken"]
    assert api.request("GET", "/v1/user", token=new).status == 200
    assert api.request("GET", "/v1/user", token=old).status == 401


def test_group_commit_rolls_back_only_the_piece_that_raised(tmp_path):
    storage = Storage(tmp_path / "cloud.db")
    writes = GroupCommitter(storage)
    writer_busy, release = threading.Event(), threading.Event()

    def hold_the_writer(tx):
        writer_busy.set()
        release.wait(10)

    def failing(tx):
        tx.set_meta("bad", "1")
        raise ValueError("this caller's mistake")

    outcomes = {}

    def call(name, work):
        try:
            outcomes[name] = writes.run(work)
        except ValueError as exc:
            outcomes[name] = exc

    first = threading.Thread(target=call, args=("hold", hold_the_writer))
    first.start()
    assert writer_busy.wait(10)
    # these queue up while the writer is busy, so they are applied together in the next transaction
    callers = [threading.Thread(target=call, args=(f"k{i}", lambda tx, i=i: tx.set_meta(f"k{i}", str(i)) or i))
               for i in range(10)]
    callers.append(threading.Thread(target=call, args=("bad", failing)))
    for caller in callers:
        caller.start()
    wait_until(lambda: writes._waiting.qsize() == len(callers), what="every caller to be waiting")
    release.set()
    for thread in [first, *callers]:
        thread.join(10)
    assert isinstance(outcomes["bad"], ValueError)
    assert [outcomes[f"k{i}"] for i in range(10)] == list(range(10))
    try:
        with storage.read() as tx:
            assert tx.get_meta("bad") is None
            assert [tx.get_meta(f"k{i}") for i in range(10)] == [str(i) for i in range(10)]
    finally:
        storage.close()


def test_a_burst_of_node_reports_through_a_full_inbox_is_confirmed_in_full(tmp_path, cloud_broker, monkeypatch):
    """paho's thread waits while the ingest thread's inbox is full; nothing is acknowledged before its
    commit, so every report the broker accepted reaches the database."""
    monkeypatch.setattr(cloud_mqtt, "INBOX_SIZE", 3)
    monkeypatch.setattr(cloud_mqtt, "MAX_BATCH", 2)
    burst = 150
    with CloudService(tmp_path / "cloud.db", mqtt=cloud_broker.mqtt_settings()) as service:
        api, user_id, token = logged_in(service)
        request_ids = [api.put_mapping(token, NODE, f"key-{i}").body["request_id"] for i in range(burst)]
        cloud_broker.publish_mappings(NODE, [{"node_id": NODE, "user_id": user_id, "secret_key": f"key-{i}"}
                                             for i in range(burst)])

        def confirmed():
            with service.storage.read() as tx:
                return sum(tx.mapping_request(r).status == "confirmed" for r in request_ids)

        wait_until(lambda: confirmed() == burst, timeout=60, what=f"all {burst} reports to confirm")
        acks = f"Received PUBACK from {service.client_id}"
        wait_until(lambda: cloud_broker.broker.log_text().count(acks) >= burst, timeout=20,
                   what="the cloud's PUBACK for every report")
