"""The secret-key user-node mapping scenarios, end to end: virtual board running the firmware, real
mosquitto with mutual TLS, the local cloud, and our client (the flow in README.md, "How the mapping flow works")."""

import json
import re
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rmkit.flow import map_node, provision_node
from rmkit.vboard.errors import BoardError
from support.board_button import FACTORY_RESET_HOLD, WIFI_RESET_HOLD, hold_button_until
from support.log_wait import wait_for_log_line
from support.mapping_status import poll_until_final

SHORT_TIMEOUT_S = 2.0  # the cloud's mapping timeout in the `timedout` scenarios (RainMaker: 60 s)


# -- helpers ----------------------------------------------------------------------------------------

def wait_for_cloud_log(rig, pattern: str, timeout: float = 10.0) -> re.Match:
    """Wait until the cloud logs a line matching `pattern` (its log is written as events happen)."""
    return wait_for_log_line(rig.stack.cloud_log, pattern, timeout)


def start_session_and_assoc(provisioner, user_id: str, secret_key: str) -> str:
    """Seed step 1 up to the Wi-Fi credentials: session and cloud_user_assoc; returns the node id."""
    provisioner.proto_ver()
    provisioner.start_session()
    return provisioner.set_user_mapping(user_id, secret_key)


def softap_listening(board) -> bool:
    try:
        with socket.create_connection(board.softap, timeout=1):
            return True
    except ConnectionRefusedError:
        return False


def acked_line(user_id: str) -> str:
    """The node's log line once the broker's PUBACK for the user's mapping arrived."""
    return rf"mapping: mapping for user {re.escape(user_id)} acknowledged"


# The scenarios 1-3 (README, "How the mapping flow works") and the factory reset run over SoftAP (Security 1) and over BLE with
# Security 0 and 1: the client reaches the node through the board's simulated radio (docs/protocol.md 1.2)
OVER_EACH_TRANSPORT = pytest.mark.parametrize("transport, sec", [("softap", 1), ("ble", 0), ("ble", 1)],
                                              ids=["softap-sec1", "ble-sec0", "ble-sec1"])


# -- the secret-key flow's scenarios ---------------------------------------------------------------------------

@OVER_EACH_TRANSPORT
def test_client_first_then_node_requested_then_confirmed(rig, transport, sec):
    """Seed steps 1, 2, 3, 4 in order: the cloud says `requested` until the node's publish arrives."""
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    board = rig.add_board("vb-s1", transport=transport, sec_ver=sec)
    secret_key = str(uuid.uuid4())
    rig.stack.broker.pause()  # the node cannot reach the broker until the client's request is in
    try:
        node_id = provision_node(rig.provisioner(board, sec=sec), rig.timeline, alice.user_id, secret_key,
                                 rig.ssid, rig.passphrase)
        request_id = alice.request_mapping(node_id, secret_key)
        assert alice.mapping_status(request_id) == "requested"
    finally:
        rig.stack.broker.resume()
    outcome = alice.wait_for_mapping(request_id, poll_interval_s=0.1, give_up_s=20)
    assert outcome.status == "confirmed"
    assert alice.nodes() == [node_id]
    assert node_id == board.node_id


@OVER_EACH_TRANSPORT
def test_node_first_then_client_confirmed(rig, transport, sec):
    """Steps 2 and 3 reversed (the flow allows it): the node's publish is in before the client's PUT."""
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    board = rig.add_board("vb-s2", transport=transport, sec_ver=sec)
    secret_key = str(uuid.uuid4())
    node_id = provision_node(rig.provisioner(board, sec=sec), rig.timeline, alice.user_id, secret_key,
                             rig.ssid, rig.passphrase)
    board.wait_for_log(acked_line(alice.user_id), timeout=20)
    wait_for_cloud_log(rig, rf"node {node_id} reported a mapping for user {alice.user_id}")

    request_id = alice.request_mapping(node_id, secret_key)
    assert alice.mapping_status(request_id) == "confirmed"  # the PUT itself matched the earlier report
    assert alice.nodes() == [node_id]


def test_node_never_online_times_out_never_confirmed(rig_factory):
    """The node gets the mapping but can never join Wi-Fi: `timedout` after the timeout, never `confirmed`."""
    rig = rig_factory(mapping_timeout=SHORT_TIMEOUT_S)
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    board = rig.add_board("vb-s3")
    rig.stack.write_air([{"ssid": "someone-else", "password": "not-ours-123"}])  # the lab AP is gone
    secret_key = str(uuid.uuid4())
    provisioner = rig.provisioner(board)
    node_id = start_session_and_assoc(provisioner, alice.user_id, secret_key)
    board.wait_for_log(r"prov: pending mapping for user \S+ stored")
    provisioner.set_wifi_config(rig.ssid, rig.passphrase)
    provisioner.apply_wifi_config()

    before_put = time.monotonic()
    request_id = alice.request_mapping(node_id, secret_key)
    statuses = poll_until_final(alice, request_id)
    waited = time.monotonic() - before_put

    assert statuses[-1] == "timedout"
    assert "confirmed" not in statuses
    assert set(statuses[:-1]) == {"requested"}
    assert waited >= SHORT_TIMEOUT_S  # not before the window closed
    assert alice.nodes() == []
    assert "mqtt: connected" not in board.read_log()  # it really never came online


@OVER_EACH_TRANSPORT
def test_node_publishes_another_secret_key_never_confirmed(rig_factory, transport, sec):
    """The client gives the node key A and the cloud key B: the node's report does not match, `timedout`."""
    rig = rig_factory(mapping_timeout=SHORT_TIMEOUT_S)
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    board = rig.add_board("vb-s4", transport=transport, sec_ver=sec)
    key_for_node, key_for_cloud = str(uuid.uuid4()), str(uuid.uuid4())
    node_id = provision_node(rig.provisioner(board, sec=sec), rig.timeline, alice.user_id, key_for_node,
                             rig.ssid, rig.passphrase)
    request_id = alice.request_mapping(node_id, key_for_cloud)
    board.wait_for_log(acked_line(alice.user_id), timeout=20)
    # the cloud did get the node's report (so it compared the keys), and still did not confirm
    wait_for_cloud_log(rig, rf"node {node_id} reported a mapping for user {alice.user_id}")

    statuses = poll_until_final(alice, request_id)
    assert statuses[-1] == "timedout"
    assert "confirmed" not in statuses
    assert alice.nodes() == []


def test_poll_while_node_joins_wifi_is_requested_then_confirmed(rig):
    """While the node is still joining Wi-Fi, a poll returns `requested`; once it is online, `confirmed`."""
    rig.stack.write_air([{"ssid": rig.ssid, "password": rig.passphrase, "join_s": 3}])
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    board = rig.add_board("vb-s5")
    secret_key = str(uuid.uuid4())
    provisioner = rig.provisioner(board)
    node_id = start_session_and_assoc(provisioner, alice.user_id, secret_key)
    provisioner.set_wifi_config(rig.ssid, rig.passphrase)
    provisioner.apply_wifi_config()

    request_id = alice.request_mapping(node_id, secret_key)
    assert provisioner.wifi_status().state == "Connecting"
    assert alice.mapping_status(request_id) == "requested"
    assert provisioner.wifi_status().state == "Connecting"  # so the poll above was mid-join

    rig.stack.write_air()  # the network answers at its usual speed from now on (also after the reboot)
    assert provisioner.wait_for_wifi(rig.ssid).state == "Connected"
    outcome = alice.wait_for_mapping(request_id, poll_interval_s=0.1, give_up_s=20)
    assert outcome.status == "confirmed"
    assert alice.nodes() == [node_id]


@OVER_EACH_TRANSPORT
def test_factory_reset_then_another_user_takes_the_node(rig, transport, sec):
    """After a factory reset the board is provisioned for bob: bob has the node, alice no longer does."""
    for email in ("alice@example.com", "bob@example.com"):
        rig.add_user(email)
    alice, bob = rig.login("alice@example.com"), rig.login("bob@example.com")
    board = rig.add_board("vb-s6", transport=transport, sec_ver=sec)
    alice_key = str(uuid.uuid4())
    node_id = provision_node(rig.provisioner(board, sec=sec), rig.timeline, alice.user_id, alice_key,
                             rig.ssid, rig.passphrase)
    assert map_node(alice, rig.timeline, node_id, alice_key, poll_interval_s=0.1).status == "confirmed"
    assert alice.nodes() == [node_id]

    since = board.log_offset()
    # factory_reset_from_repl() reports the reset, erases the state and ends in machine.reset(), taking the REPL
    # with it
    with pytest.raises(BoardError, match="rebooted while running the code"):
        board.exec("import rmnode.node\nrmnode.node.factory_reset_from_repl()", timeout=20)
    board.wait_for_log(r"online: factory reset reported", since=since)
    board.wait_for_log(r"node: state: provisioning", timeout=30, since=since)
    # the reset report alone removed alice's association (before anyone provisions the node again)
    wait_for_cloud_log(rig, rf"node {node_id} reset: associations of 1 user\(s\) removed \({alice.user_id}\)")
    assert alice.nodes() == []

    bob_key = str(uuid.uuid4())
    assert provision_node(rig.provisioner(board, sec=sec), rig.timeline, bob.user_id, bob_key,
                          rig.ssid, rig.passphrase) == node_id
    assert map_node(bob, rig.timeline, node_id, bob_key, poll_interval_s=0.1).status == "confirmed"
    assert bob.nodes() == [node_id]
    assert alice.nodes() == []


def test_the_boot_button_resets_wifi_keeping_the_user_then_resets_to_factory_telling_the_cloud(rig):
    """docs/protocol.md 5.5, as upstream: held 3 to 10 s the BOOT button resets Wi-Fi only, so the cloud keeps
    alice's node and her provisioning it again confirms; held 10 s it is a factory reset, which the node reports
    before erasing itself (5.3): the cloud drops alice, and the node serves provisioning again."""
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    board = rig.add_board("vb-s-button")
    key = str(uuid.uuid4())
    node_id = provision_node(rig.provisioner(board), rig.timeline, alice.user_id, key, rig.ssid, rig.passphrase)
    assert map_node(alice, rig.timeline, node_id, key, poll_interval_s=0.1).status == "confirmed"
    board.wait_for_log(acked_line(alice.user_id), timeout=30)

    since = board.log_offset()
    hold_button_until(board, WIFI_RESET_HOLD, since)
    board.wait_for_log(r"node: state: provisioning", since=since, timeout=30)
    assert alice.nodes() == [node_id]
    key = str(uuid.uuid4())
    assert provision_node(rig.provisioner(board), rig.timeline, alice.user_id, key, rig.ssid,
                          rig.passphrase) == node_id
    assert map_node(alice, rig.timeline, node_id, key, poll_interval_s=0.1).status == "confirmed"
    board.wait_for_log(acked_line(alice.user_id), since=since, timeout=30)

    since = board.log_offset()
    hold_button_until(board, FACTORY_RESET_HOLD, since)
    board.wait_for_log(r"online: factory reset reported", since=since, timeout=10)
    wait_for_cloud_log(rig, rf"node {node_id} reset: associations of 1 user\(s\) removed \({alice.user_id}\)")
    assert alice.nodes() == []
    board.wait_for_log(r"node: state: provisioning", since=since, timeout=30)
    assert softap_listening(board)


def test_a_board_serving_both_transports_is_provisioned_over_ble_then_stops_both(rig):
    """transport "both": the access point and the radio serve at once; a BLE client provisions the node,
    which then stops both before its reboot, and the mapping is confirmed."""
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    board = rig.add_board("vb-both", transport="both")
    assert softap_listening(board)
    secret_key = str(uuid.uuid4())
    node_id = provision_node(rig.provisioner(board, over="ble"), rig.timeline, alice.user_id, secret_key,
                             rig.ssid, rig.passphrase)
    assert map_node(alice, rig.timeline, node_id, secret_key, poll_interval_s=0.1).status == "confirmed"
    board.wait_for_log(r"ble: stopped, radio off")
    board.wait_for_log(r"node: state: online")
    assert not softap_listening(board)


def test_two_boards_two_users_at_the_same_time(rig):
    """Two boards provisioned concurrently for two users: each user gets exactly their node."""
    emails = ("alice@example.com", "bob@example.com")
    for email in emails:
        rig.add_user(email)
    clients = [rig.login(email) for email in emails]
    boards = [rig.add_board("vb-s7a"), rig.add_board("vb-s7b")]
    start_together = threading.Barrier(2)

    def provision_and_map(client, board):
        secret_key = str(uuid.uuid4())
        provisioner = rig.provisioner(board)
        start_together.wait(timeout=10)
        node_id = provision_node(provisioner, rig.timeline, client.user_id, secret_key,
                                 rig.ssid, rig.passphrase)
        return node_id, map_node(client, rig.timeline, node_id, secret_key, poll_interval_s=0.1).status

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(provision_and_map, clients, boards))

    assert results == [(boards[0].node_id, "confirmed"), (boards[1].node_id, "confirmed")]
    assert clients[0].nodes() == [boards[0].node_id]
    assert clients[1].nodes() == [boards[1].node_id]


def test_reboot_between_receiving_and_publishing_the_mapping_still_confirmed(rig):
    """Power cut after the mapping is stored but before it is published: the node publishes it after
    the reboot, straight from its stored Wi-Fi credentials, and the request is `confirmed`."""
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    board = rig.add_board("vb-s8")
    secret_key = str(uuid.uuid4())
    rig.stack.broker.pause()  # holds the node's MQTT connect: the publish cannot happen before the cut
    try:
        node_id = provision_node(rig.provisioner(board), rig.timeline, alice.user_id, secret_key,
                                 rig.ssid, rig.passphrase)
        board.wait_for_log(r"prov: pending mapping for user \S+ stored")
        board.wait_for_log(r"node: joined \S+; credentials stored")
        board.wait_for_log(r"mqtt: connecting to", timeout=20)  # in station mode, held at the TLS handshake
        request_id = alice.request_mapping(node_id, secret_key)
        assert alice.mapping_status(request_id) == "requested"
        assert not re.search(r"published \S+/user/mapping", board.read_log())

        since = board.log_offset()
        board.power_cut()
    finally:
        rig.stack.broker.resume()

    board.wait_for_log(r"node: state: connecting", since=since)
    board.wait_for_log(acked_line(alice.user_id), timeout=30, since=since)
    assert "state: provisioning" not in board.read_log(since)
    outcome = alice.wait_for_mapping(request_id, poll_interval_s=0.1, give_up_s=20)
    assert outcome.status == "confirmed"
    assert alice.nodes() == [node_id]


# -- what provisioning leaves behind ----------------------------------------------------------------

def test_access_point_stops_after_provisioning(rig):
    """Once the client has read Connected, the provisioning service closes and stays closed."""
    board = rig.add_board("vb-ap")
    assert softap_listening(board)
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    provision_node(rig.provisioner(board), rig.timeline, alice.user_id, str(uuid.uuid4()),
                   rig.ssid, rig.passphrase)
    stopped = board.wait_for_log(r"node: provisioning stopped", timeout=10)
    assert not softap_listening(board)
    board.wait_for_log(r"node: state: online", since=stopped.end())  # station mode, not provisioning
    assert not softap_listening(board)
    assert "http: serving" not in board.read_log(stopped.end())


def test_access_point_stops_after_the_linger_when_the_client_never_reads_connected(rig):
    """A client that applies Wi-Fi and goes away: the node stops its service after prov_linger_s anyway."""
    board = rig.add_board("vb-linger", start=False)
    (Path(board.flash_dir) / "settings.json").write_text(json.dumps({"prov_linger_s": 2}))
    board.start()
    board.wait_for_log(r"node: state: provisioning", timeout=30)
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    provisioner = rig.provisioner(board)
    start_session_and_assoc(provisioner, alice.user_id, str(uuid.uuid4()))
    provisioner.set_wifi_config(rig.ssid, rig.passphrase)
    provisioner.apply_wifi_config()  # and never asks for the status
    joined = board.wait_for_log(r"I \((\d+)\) node: joined \S+; credentials stored", timeout=10)
    stopped = board.wait_for_log(r"I \((\d+)\) node: provisioning stopped", timeout=10, since=joined.end())
    assert not softap_listening(board)
    # it kept serving for the client that never came back, as long as the setting says (board's own ms stamps)
    assert int(stopped.group(1)) - int(joined.group(1)) >= 2000


def test_credentials_persist_across_a_reset(rig):
    """After a reset the node joins the stored network and goes online without provisioning again."""
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    board = rig.add_board("vb-cred")
    secret_key = str(uuid.uuid4())
    node_id = provision_node(rig.provisioner(board), rig.timeline, alice.user_id, secret_key,
                             rig.ssid, rig.passphrase)
    assert map_node(alice, rig.timeline, node_id, secret_key, poll_interval_s=0.1).status == "confirmed"
    board.wait_for_log(acked_line(alice.user_id))

    since = board.log_offset()
    board.reset()
    board.wait_for_log(rf"node: state: connecting \({re.escape(rig.ssid)}\)", since=since)
    board.wait_for_log(r"node: state: online", since=since)
    board.wait_for_log(r"online: config reported", timeout=20, since=since)
    after_reset = board.read_log(since)
    assert "state: provisioning" not in after_reset
    assert "http: serving" not in after_reset
    assert not re.search(r"published \S+/user/mapping", after_reset)  # nothing pending any more
    assert alice.nodes() == [node_id]
