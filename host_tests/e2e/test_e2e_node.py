"""Provisioning and the online phase on a whole node: the firmware on a virtual board (main.py, boot, flash,
simulated Wi-Fi), real mosquitto with mutual TLS, our provisioning client over the board's SoftAP HTTP
port, and a paho subscriber with the harness identity watching the node's topics.

Unlike the launcher tests (test_provision_firmware.py, test_online_node.py) nothing here is wired by
hand: the board boots its own node, which provisions, stops its access point, reboots into station
mode and publishes.
"""

import json
import socket
import uuid

import pytest

from support.board_button import FACTORY_RESET_HOLD, WIFI_RESET_HOLD, hold_button_until
from support.fixtures_mqtt import Subscriber
from support.wait import wait_until
from rmkit.proto import pb as wire
from rmkit.provision.errors import HandshakeFailed, WifiJoinFailed
from rmkit.provision.transport import MAX_REQUEST
from rmkit.vboard.errors import BoardError

RESET_USER_ID = "esp-rmaker"  # docs/protocol.md 5.3: the factory-reset report's dummy user and key
RESET_SECRET_KEY = "failed"


@pytest.fixture
def harness(rig):
    """Factory: a subscriber on node/# with the harness identity on the rig's broker; closed at teardown."""
    made = []

    def make() -> Subscriber:
        sub = Subscriber(rig.stack.pki, rig.stack.broker, "harness")
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


def add_board(rig, name, settings=None, **options):
    """A started board in provisioning; `settings` are merged into /settings.json before it boots."""
    if not settings:
        return rig.add_board(name, **options)
    board = rig.add_board(name, start=False, **options)
    path = board.flash_dir / "settings.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(settings)
    path.write_text(json.dumps(merged))
    board.start()
    board.wait_for_log(r"state: provisioning", timeout=30)
    return board


def read_state(board) -> dict:
    path = board.flash_dir / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def accepts(host: str, port: int) -> bool:
    """True if something accepts TCP connections on host:port, False if refused."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except ConnectionRefusedError:
        return False


def wait_port_closed(board, timeout: float) -> None:
    """Wait until nothing accepts on the board's provisioning port; AssertionError on timeout."""
    host, port = board.softap

    def closed() -> bool:
        try:
            return not accepts(host, port)
        except (ConnectionResetError, socket.timeout):
            return False  # the listener went away while our connection sat in its backlog: ask again

    wait_until(closed, timeout, interval=0.05, what=f"{host}:{port} to stop accepting connections")


def mapping_json(node_id: str, user_id: str, secret_key: str, reset: bool) -> bytes:
    """docs/protocol.md 5.3 as the node sends it: compact, Espressif's key order, "reset" only when true."""
    text = '{"node_id":"%s","user_id":"%s","secret_key":"%s"' % (node_id, user_id, secret_key)
    return (text + (',"reset":true}' if reset else "}")).encode()


def full_sequence(rig, board, sec: int, user_id: str, secret_key: str):
    """docs/protocol.md 2.3 step by step: proto-ver, session, cloud_user_assoc, prov-config set/apply/status."""
    client = rig.provisioner(board, sec=sec)
    info = client.proto_ver()
    assert info["prov"]["sec_ver"] == sec
    client.start_session()
    assert client.security_version == sec
    assert client.set_user_mapping(user_id, secret_key) == board.node_id
    client.set_wifi_config(rig.ssid, rig.passphrase)
    client.apply_wifi_config()
    status = client.wait_for_wifi(rig.ssid)
    assert status.state == "Connected" and status.ssid == rig.ssid and status.ip4_addr
    return client


@pytest.mark.parametrize("sec", [1, 0])
def test_full_sequence_then_service_stops_and_node_publishes_the_exact_mapping(rig, harness, sec):
    """The whole sequence reaching Connected, then the AP/HTTP service stops; then a harness
    subscriber gets the node's config and then the exact mapping JSON on the node's topic."""
    watcher = harness()
    board = rig.add_board(f"vb-e2e-sec{sec}", sec_ver=sec)
    user_id, secret_key = f"user-sec{sec}", str(uuid.uuid4())
    client = full_sequence(rig, board, sec, user_id, secret_key)
    assert read_state(board)["pending_mapping"] == {"user_id": user_id, "secret_key": secret_key, "reset": True}
    wait_port_closed(board, timeout=10)  # read Connected -> service down within the grace time
    client.transport.close()
    board.wait_for_log(r"access point down", timeout=5)
    board.wait_for_log(r"provisioning stopped", timeout=5)
    mapping_topic = f"node/{board.node_id}/user/mapping"
    watcher.wait_for_topic(mapping_topic, timeout=30)
    topics = [t for t, _ in watcher.messages if t.startswith(f"node/{board.node_id}/")]
    assert topics[:2] == [f"node/{board.node_id}/config", mapping_topic]
    config = json.loads(watcher.payloads(f"node/{board.node_id}/config")[0])
    assert config["node_id"] == board.node_id
    assert watcher.payloads(mapping_topic) == [mapping_json(board.node_id, user_id, secret_key, reset=True)]
    board.wait_for_log(r"acknowledged", timeout=10)
    state = read_state(board)
    assert "pending_mapping" not in state and state["mapped_user_id"] == user_id
    assert state["wifi"]["ssid"] == rig.ssid
    serial = board.read_log()
    assert secret_key not in serial and rig.passphrase not in serial and board.pop not in serial


def test_linger_bounds_the_service_when_the_client_never_reads_connected(rig):
    """prov_linger_s from /settings.json: a client that applies Wi-Fi and walks away does not keep the
    access point and HTTP server up beyond it."""
    board = add_board(rig, "vb-e2e-linger", settings={"prov_linger_s": 1})
    client = rig.provisioner(board)
    client.start_session()
    client.set_user_mapping("user-linger", str(uuid.uuid4()))
    client.set_wifi_config(rig.ssid, rig.passphrase)
    client.apply_wifi_config()
    joined = board.wait_for_log(r"\((\d+)\) node: joined .*credentials stored", timeout=10)
    wait_port_closed(board, timeout=5)  # the default prov_linger_s (30 s) would fail here
    stopped = board.wait_for_log(r"\((\d+)\) node: provisioning stopped", since=joined.end(), timeout=5)
    # it did linger for a client that might still ask (uptime ms stamps of the board's own log lines)
    assert int(stopped.group(1)) - int(joined.group(1)) >= 1000
    board.wait_for_log(r"state: online", timeout=20)


def test_wrong_pop_is_refused_and_a_correct_session_right_after_succeeds(rig):
    board = rig.add_board("vb-e2e-pop")
    wrong = rig.provisioner(board, pop="not-the-pop")
    with pytest.raises(HandshakeFailed):
        wrong.start_session()
    wrong.transport.close()
    client = rig.provisioner(board)
    client.start_session()
    assert client.set_user_mapping("user-pop", str(uuid.uuid4())) == board.node_id
    assert board.running and board.crashes == []


def test_wrong_wifi_password_fails_with_auth_error_and_prov_ctrl_reset_allows_a_retry(rig, harness):
    """A retry within the same session (ESP-IDF lets a client send the config again after a failure) keeps
    the mapping that session delivered: it is published once the node is online (docs/protocol.md 4.3)."""
    watcher = harness()
    board = rig.add_board("vb-e2e-wifi")
    user_id, secret_key = "user-wifi", str(uuid.uuid4())
    client = rig.provisioner(board)
    client.start_session()
    client.set_user_mapping(user_id, secret_key)
    client.set_wifi_config(rig.ssid, "not-the-passphrase")
    client.apply_wifi_config()
    with pytest.raises(WifiJoinFailed) as failed:
        client.wait_for_wifi(rig.ssid)
    assert (failed.value.state, failed.value.reason) == ("ConnectionFailed", "AuthError")
    # the driver said "connecting" through its retries, then reason 15 as an ESP32 does
    board.wait_for_log(rf"wifi: joining {rig.ssid} failed: reason 15 \(authentication\)", timeout=5)
    assert "wifi" not in read_state(board)  # a failed join stores nothing
    client.reset_wifi()
    client.set_wifi_config(rig.ssid, rig.passphrase)
    client.apply_wifi_config()
    assert client.wait_for_wifi(rig.ssid).state == "Connected"
    board.wait_for_log(r"state: online", timeout=20)
    assert read_state(board)["wifi"] == {"ssid": rig.ssid, "passphrase": rig.passphrase}
    mapping_topic = f"node/{board.node_id}/user/mapping"
    assert watcher.wait_for_topic(mapping_topic, timeout=30) == [
        mapping_json(board.node_id, user_id, secret_key, reset=True)]
    assert "dropped" not in board.read_log()


def test_a_mapping_from_a_session_whose_join_failed_is_dropped_when_a_new_session_starts(rig, harness):
    """docs/protocol.md 4.3. Session 1 delivers a mapping and a wrong passphrase, and the join fails;
    session 2 (another client, or the same one starting over) sends only the right Wi-Fi credentials. The
    node says it dropped session 1's mapping, goes online, and never publishes that mapping as current."""
    watcher = harness()
    board = rig.add_board("vb-e2e-stale")
    first = rig.provisioner(board)
    first.start_session()
    first.set_user_mapping("user-stale", str(uuid.uuid4()))
    first.set_wifi_config(rig.ssid, "not-the-passphrase")
    first.apply_wifi_config()
    with pytest.raises(WifiJoinFailed):
        first.wait_for_wifi(rig.ssid)
    assert read_state(board)["pending_mapping"]["user_id"] == "user-stale"  # kept while session 1 lasts
    first.transport.close()
    since = board.log_offset()
    second = rig.provisioner(board)  # a new connection without the cookie: a new session
    second.start_session()
    board.wait_for_log(r"node: pending mapping for user user-stale dropped: an earlier session's, join not "
                       r"completed", since=since, timeout=5)
    second.set_wifi_config(rig.ssid, rig.passphrase)
    second.apply_wifi_config()
    assert second.wait_for_wifi(rig.ssid).state == "Connected"
    config_topic = f"node/{board.node_id}/config"
    watcher.wait_for_topic(config_topic, timeout=30)
    # the mapping would follow the config's PUBACK; the node says it has none
    reported = board.wait_for_log(r"online: config reported", since=since, timeout=10)
    board.wait_for_log(r"online: no mapping pending", since=reported.end(), timeout=10)
    assert watcher.payloads(f"node/{board.node_id}/user/mapping") == []
    assert "user/mapping" not in board.read_log()
    assert "pending_mapping" not in read_state(board)


def test_apply_while_the_join_is_under_way_lets_the_join_go_on(rig):
    """A client that applies the Wi-Fi config twice: the second ApplyConfig is answered Success and the join
    under way goes on (a second WLAN.connect() then would fail on an ESP32: "Wifi Internal Error", which
    rmnode.wifi retries; test_wifi_sim.py has that); the node joins once, and lives."""
    rig.stack.write_air([{"ssid": rig.ssid, "password": rig.passphrase, "join_s": 0.5}])
    board = rig.add_board("vb-e2e-twice")
    client = rig.provisioner(board)
    client.start_session()
    client.set_user_mapping("user-twice", str(uuid.uuid4()))
    client.set_wifi_config(rig.ssid, rig.passphrase)
    client.apply_wifi_config()
    client.apply_wifi_config()
    assert client.wait_for_wifi(rig.ssid).state == "Connected"
    joined = board.wait_for_log(r"node: joined \S+; credentials stored", timeout=20)
    assert board.read_log()[:joined.start()].count("wifi: joining") == 1
    board.wait_for_log(r"state: online", timeout=20)
    assert board.crashes == []


def test_power_cut_right_after_cloud_user_assoc_keeps_the_mapping_until_a_new_session(rig, harness):
    """The node persists the mapping the moment it arrives (beyond Espressif's node): a power cut before
    any Wi-Fi data leaves it on flash. The client must provision again, and its new session replaces it
    (docs/protocol.md 4.3): the mapping published is the one that session sends."""
    watcher = harness()
    board = rig.add_board("vb-e2e-cut")
    user_id, secret_key = "user-cut", str(uuid.uuid4())
    client = rig.provisioner(board)
    client.start_session()
    assert client.set_user_mapping(user_id, secret_key) == board.node_id
    client.transport.close()
    since = board.log_offset()  # before the cut: the new boot may reach provisioning before power_cut returns
    board.power_cut()
    assert read_state(board) == {"pending_mapping": {"user_id": user_id, "secret_key": secret_key, "reset": True}}
    board.wait_for_log(r"state: provisioning", since=since, timeout=20)
    assert read_state(board)["pending_mapping"]["secret_key"] == secret_key  # still there: no session yet
    again = rig.provisioner(board)
    again.start_session()
    board.wait_for_log(rf"pending mapping for user {user_id} dropped", since=since, timeout=5)
    new_key = str(uuid.uuid4())
    assert again.set_user_mapping(user_id, new_key) == board.node_id
    again.set_wifi_config(rig.ssid, rig.passphrase)
    again.apply_wifi_config()
    assert again.wait_for_wifi(rig.ssid).state == "Connected"
    mapping_topic = f"node/{board.node_id}/user/mapping"
    assert watcher.wait_for_topic(mapping_topic, timeout=30) == [
        mapping_json(board.node_id, user_id, new_key, reset=True)]


def test_factory_reset_while_online_publishes_the_reset_mapping_then_provisions_again(rig, harness):
    """Factory reset while online reports the reset mapping (docs/protocol.md 5.3), then the board is back in
    provisioning with no credentials."""
    watcher = harness()
    board = rig.add_board("vb-e2e-freset")
    user_id, secret_key = "user-freset", str(uuid.uuid4())
    full_sequence(rig, board, 1, user_id, secret_key)
    board.wait_for_log(r"acknowledged", timeout=30)
    mapping_topic = f"node/{board.node_id}/user/mapping"
    assert watcher.payloads(mapping_topic) == [mapping_json(board.node_id, user_id, secret_key, reset=True)]
    since = board.log_offset()
    # what a user types at the REPL; it interrupts main.py, and its machine.reset() ends the REPL session
    with pytest.raises(BoardError, match="rebooted while running the code"):
        board.exec("import rmnode.node as n\nn.factory_reset_from_repl()", timeout=30)
    board.wait_for_log(r"factory reset done \(reported to the cloud\)", since=since, timeout=5)
    payloads = watcher.wait_for_topic(mapping_topic, count=2, timeout=15)
    assert payloads[1] == json.dumps({"node_id": board.node_id, "user_id": RESET_USER_ID,
                                      "secret_key": RESET_SECRET_KEY, "reset": True},
                                     separators=(",", ":")).encode()
    board.wait_for_log(r"state: provisioning", since=since, timeout=20)
    assert read_state(board) == {}
    assert accepts(*board.softap)  # the provisioning service is back


def test_button_held_3_s_online_resets_wifi_only_and_the_same_user_maps_again_without_reset(rig, harness):
    """docs/protocol.md 5.5: a Wi-Fi reset erases the credentials and nothing else, as upstream's. The node
    leaves MQTT with a DISCONNECT, reports nothing, reboots into provisioning and keeps the user it was mapped
    to, so that user provisioning it again publishes no "reset"."""
    watcher = harness()
    board = rig.add_board("vb-e2e-wifireset")
    user_id, secret_key = "user-wifireset", str(uuid.uuid4())
    full_sequence(rig, board, 1, user_id, secret_key).transport.close()
    board.wait_for_log(r"acknowledged", timeout=30)
    mapping_topic = f"node/{board.node_id}/user/mapping"
    since = board.log_offset()
    hold_button_until(board, WIFI_RESET_HOLD, since)
    board.wait_for_log(r"board: button released after \d+ ms: Wi-Fi reset", since=since, timeout=5)
    board.wait_for_log(r"node: Wi-Fi reset: credentials erased, user mapping kept; rebooting into provisioning",
                       since=since, timeout=10)
    board.wait_for_log(r"state: provisioning", since=since, timeout=20)
    assert read_state(board) == {"mapped_user_id": user_id}
    assert f"Client {board.node_id} disconnected." in rig.stack.broker.log_text()  # a DISCONNECT, not a drop
    assert watcher.payloads(mapping_topic) == [mapping_json(board.node_id, user_id, secret_key, reset=True)]

    new_key = str(uuid.uuid4())
    full_sequence(rig, board, 1, user_id, new_key).transport.close()
    assert watcher.wait_for_topic(mapping_topic, count=2, timeout=30)[1] == mapping_json(
        board.node_id, user_id, new_key, reset=False)


def test_button_held_10_s_online_reports_the_factory_reset_then_provisions_again(rig, harness):
    """docs/protocol.md 5.3 and 5.5: the long hold is a factory reset; online, the node tells the cloud with
    the dummy reset mapping first, then erases its state and serves provisioning again."""
    watcher = harness()
    board = rig.add_board("vb-e2e-buttonreset")
    user_id, secret_key = "user-buttonreset", str(uuid.uuid4())
    full_sequence(rig, board, 1, user_id, secret_key).transport.close()
    board.wait_for_log(r"acknowledged", timeout=30)
    since = board.log_offset()
    hold_button_until(board, FACTORY_RESET_HOLD, since)
    board.wait_for_log(r"board: button released after \d+ ms: factory reset", since=since, timeout=5)
    board.wait_for_log(r"factory reset done \(reported to the cloud\)", since=since, timeout=10)
    payloads = watcher.wait_for_topic(f"node/{board.node_id}/user/mapping", count=2, timeout=15)
    assert payloads[1] == json.dumps({"node_id": board.node_id, "user_id": RESET_USER_ID,
                                      "secret_key": RESET_SECRET_KEY, "reset": True}, separators=(",", ":")).encode()
    board.wait_for_log(r"state: provisioning", since=since, timeout=20)
    assert read_state(board) == {}
    assert accepts(*board.softap)


def test_button_while_provisioning_a_short_press_does_nothing_and_a_long_hold_erases_the_pending_mapping(rig):
    """In the provisioning phase the button works too: under 3 s nothing happens; held 10 s it is a factory
    reset, with nobody to tell (offline, as upstream): the pending mapping is erased and the node reboots into
    provisioning."""
    board = rig.add_board("vb-e2e-provbutton")
    client = rig.provisioner(board)
    client.start_session()
    assert client.set_user_mapping("user-provbutton", str(uuid.uuid4())) == board.node_id
    client.transport.close()
    since = board.log_offset()
    board.press_button(0.3)  # a click (one of a few ms is contact noise, and ignored)
    board.wait_for_log(r"board: button released after \d+ ms: no reset \(hold 3 s for Wi-Fi, 10 s for factory\)",
                       since=since, timeout=10)
    assert read_state(board)["pending_mapping"]["user_id"] == "user-provbutton"

    since = board.log_offset()
    hold_button_until(board, FACTORY_RESET_HOLD, since)
    board.wait_for_log(r"factory reset done \(cloud not told\)", since=since, timeout=10)
    board.wait_for_log(r"state: provisioning", since=since, timeout=20)
    assert read_state(board) == {}


def test_broker_down_when_the_node_comes_online_retries_with_growing_delays_then_publishes(rig, harness):
    """The broker is down when the node comes online; the node retries with growing delays
    (exponential backoff with jitter) and publishes the mapping once the broker is back."""
    board = rig.add_board("vb-e2e-nobroker")
    user_id, secret_key = "user-nobroker", str(uuid.uuid4())
    rig.stack.broker.stop()
    since = board.log_offset()
    client = full_sequence(rig, board, 1, user_id, secret_key)
    client.transport.close()
    delays = []
    for _ in range(3):
        match = board.wait_for_log(r"connect failed: [^\n]*; retry in (\d+) ms", since=since, timeout=20)
        delays.append(int(match.group(1)))
        since = match.end()
    # with equal jitter the n-th wait lies in [d/2, d] for d = first * 2**n: the third exceeds the first
    assert delays[2] > delays[0], delays
    assert read_state(board)["pending_mapping"]["user_id"] == user_id  # nothing lost meanwhile
    rig.stack.broker.start()
    watcher = harness()
    mapping_topic = f"node/{board.node_id}/user/mapping"
    assert watcher.wait_for_topic(mapping_topic, timeout=30) == [
        mapping_json(board.node_id, user_id, secret_key, reset=True)]
    board.wait_for_log(r"acknowledged", since=since, timeout=10)
    assert "pending_mapping" not in read_state(board)


@pytest.mark.parametrize("sec", [1, 0])
def test_a_secured_request_of_the_largest_size_the_node_accepts_is_served(rig, sec):
    """The node's HTTP server takes bodies up to MAX_REQUEST bytes: a secured request that big is
    decrypted, decoded and answered (here: refused, an SSID is at most 32 bytes), never an
    out-of-memory 500, in session after session, and the session stays usable."""
    board = rig.add_board(f"vb-e2e-big{sec}", sec_ver=sec)
    message = wire.WiFiConfigPayload(msg=wire.WiFiConfigMsgType.TypeCmdSetConfig)
    message.cmd_set_config.passphrase = b"p"
    size = MAX_REQUEST
    while True:  # the largest SSID that keeps the whole message within MAX_REQUEST (length varints grow)
        message.cmd_set_config.ssid = b"s" * size
        if len(message.SerializeToString()) <= MAX_REQUEST:
            break
        size -= 1
    assert len(message.SerializeToString()) == MAX_REQUEST
    for _ in range(10):  # a fresh session each time, as clients that retry would open
        client = rig.provisioner(board, sec=sec)
        client.proto_ver()
        client.start_session()
        response = client._secured("prov-config", message, wire.WiFiConfigPayload)
        assert response.resp_set_config.status != wire.Status.Success
        client.transport.close()
    assert client.set_user_mapping("user-big", str(uuid.uuid4())) == board.node_id  # still in step
    log = board.read_log()
    assert "MemoryError" not in log and "internal error" not in log
