"""Provisioning endpoints through Protocomm: the sequence esp-rainmaker-cli runs (docs/protocol.md 2.3) and
bad inputs of every kind."""

import json

from rmnode import pb
from rmnode import protocomm
from rmnode.prov_endpoints import Provisioning, version_json
from rmnode.store import Store
import fwtest
from fwtest import (raises, check, equal, FakeStation, FakeConfig, Sec1Client, sec1_session, secured,
                    tmpdir)


class Node:
    """A Provisioning wired like the lead wires it: pending mapping persisted in a Store."""

    def __init__(self, sec_ver=1, pop="abcd1234", scan_results=None, fail_store=False, fail_session=False):
        self.store = Store(tmpdir("prov") + "/state.json")
        self.station = FakeStation(scan_results)
        self.events = []
        self.fail_store = fail_store
        self.fail_session = fail_session
        self.prov = Provisioning(FakeConfig(sec_ver, pop, "node-1"), self.station, self.on_user_mapping,
                                 on_wifi_config_applied=self.on_applied, on_reset=self.on_reset,
                                 on_session=self.on_session)

    def on_user_mapping(self, user_id, secret_key):
        if self.fail_store:
            raise OSError(28, "no space left")
        self.store.set("pending_mapping", {"user_id": user_id, "secret_key": secret_key})
        self.events.append("mapping stored")

    def on_applied(self, ssid, passphrase):
        self.events.append(("applied", ssid))

    def on_reset(self):
        self.events.append("reset")

    def on_session(self, session_id):
        self.events.append(("session", session_id))
        if self.fail_session:
            raise OSError(5, "flash gone")


def _sec1(node, session_id=7, pop=b"abcd1234"):
    return sec1_session(node.prov.dispatch, session_id, pop)


def _config(node, client, request, session_id=7):
    return secured(node.prov.dispatch, client, session_id, "prov-config", pb.WiFiConfigPayload, request)


def test_proto_ver_json_and_body_ignored():
    node = Node()
    for body in (b"---", b"no_pop", b"wifi_scan", b"", bytes(range(256)) * 4):
        reply = json.loads(node.prov.dispatch(1, "proto-ver", body))
        equal(reply, {"prov": {"ver": "v1.1", "sec_ver": 1, "cap": ["wifi_scan"]}}, "proto-ver")


def test_proto_ver_capabilities():
    equal(json.loads(version_json(0, "x"))["prov"]["cap"], ["no_sec", "wifi_scan"], "sec0")
    equal(json.loads(version_json(1, ""))["prov"]["cap"], ["no_pop", "wifi_scan"], "sec1 without PoP")
    text = version_json(1, "pop")
    check("claim" not in text and "ch_resp" not in text and "rmaker" not in text, "never claim/ch_resp")


def test_full_sec1_sequence_reaches_connected():
    node = Node()
    node.prov.dispatch(7, "proto-ver", b"---")
    client = _sec1(node)
    resp = secured(node.prov.dispatch, client, 7, "cloud_user_assoc", pb.RMakerConfigPayload,
                   {"cmd_set_user_mapping": {"UserID": "user-1", "SecretKey": "secret-1"}})
    equal(resp["msg"], 1, "RespSetUserMapping")
    equal(resp["resp_set_user_mapping"], {"Status": 0, "NodeId": "node-1"}, "mapping reply")
    equal(_config(node, client, {"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"pw123456"}})
          ["resp_set_config"]["status"], 0, "SetConfig")
    # ApplyConfig exactly as the CLI sends it: msg only (docs/protocol.md 2.4)
    apply_reply = pb.decode(pb.WiFiConfigPayload, client.crypt(node.prov.dispatch(7, "prov-config", client.crypt(b"\x08\x04"))))
    equal(apply_reply["resp_apply_config"]["status"], 0, "ApplyConfig")
    equal(node.station.joins, [(b"home", b"pw123456", None)], "station joined")
    status = _config(node, client, {"cmd_get_status": {}})["resp_get_status"]
    equal(status["sta_state"], fwtest.STA_CONNECTING, "connecting")
    node.station.current = node.station.StationStatus(fwtest.STA_CONNECTED, None, "198.51.100.7", b"home",
                                                      b"\x01\x02\x03\x04\x05\x06", 6, 3)
    status = _config(node, client, {"cmd_get_status": {}})["resp_get_status"]
    equal(status["sta_state"], fwtest.STA_CONNECTED, "connected")
    equal(status["connected"], {"ip4_addr": "198.51.100.7", "auth_mode": 3, "ssid": b"home",
                                "bssid": b"\x01\x02\x03\x04\x05\x06", "channel": 6}, "connected state")
    equal(node.events, [("session", 7), "mapping stored", ("applied", b"home")], "callbacks")


def test_sec0_sequence():
    node = Node(sec_ver=0)
    equal(node.prov.dispatch(3, "prov-session", bytes.fromhex("5203a20100")), bytes.fromhex("52050801aa0100"), "sec0")
    req = pb.encode(pb.RMakerConfigPayload, {"cmd_set_user_mapping": {"UserID": "u", "SecretKey": "k"}})
    resp = pb.decode(pb.RMakerConfigPayload, node.prov.dispatch(3, "cloud_user_assoc", req))
    equal(resp["resp_set_user_mapping"]["NodeId"], "node-1", "node id over sec0")


def test_on_session_runs_for_every_completed_handshake_only():
    """docs/protocol.md 4.3 rests on this: the node hears of each session once its handshake is done (a new
    client, or one starting over on the same session id), never of a half-done or failed one."""
    node = Node()
    client = Sec1Client(b"abcd1234")
    resp0 = node.prov.dispatch(7, "prov-session", client.cmd0())
    equal(node.events, [], "not after Command0")
    client.check_resp1(node.prov.dispatch(7, "prov-session", client.cmd1(resp0)))
    equal(node.events, [("session", 7)], "after Command1, before the client has Response1")
    _sec1(node, session_id=7)  # the same client starting over
    _sec1(node, session_id=8)  # another client
    equal(node.events, [("session", 7), ("session", 7), ("session", 8)], "once per handshake")
    raises(protocomm.ProtocommError, _sec1, node, 9, b"not-the-pop")
    equal(len(node.events), 3, "not for a failed handshake")
    sec0 = Node(sec_ver=0)
    sec0.prov.dispatch(3, "prov-session", bytes.fromhex("5203a20100"))
    equal(sec0.events, [("session", 3)], "Security 0")


def test_a_session_whose_start_failed_is_unusable():
    """If the node cannot do what a new session requires (drop an earlier session's mapping), the client
    gets an error and the session serves nothing."""
    node = Node(fail_session=True)
    raises(protocomm.ProtocommError, _sec1, node)
    request = pb.encode(pb.RMakerConfigPayload, {"cmd_set_user_mapping": {"UserID": "u", "SecretKey": "k"}})
    raises(protocomm.SessionError, node.prov.dispatch, 7, "cloud_user_assoc", request)
    equal(node.store.get("pending_mapping"), None, "nothing stored")


def test_pending_mapping_persisted_before_reply():
    node = Node()
    client = _sec1(node)
    secured(node.prov.dispatch, client, 7, "cloud_user_assoc", pb.RMakerConfigPayload,
            {"cmd_set_user_mapping": {"UserID": "user-9", "SecretKey": "sk-9"}})
    # a "reboot": a fresh Store on the same file still holds the mapping
    equal(Store(node.store.path).get("pending_mapping"), {"user_id": "user-9", "secret_key": "sk-9"}, "persisted")


def test_mapping_store_failure_is_invalid_state():
    node = Node(fail_store=True)
    client = _sec1(node)
    resp = secured(node.prov.dispatch, client, 7, "cloud_user_assoc", pb.RMakerConfigPayload,
                   {"cmd_set_user_mapping": {"UserID": "user-9", "SecretKey": "sk-9"}})
    equal(resp["resp_set_user_mapping"], {"Status": fwtest.MAPPING_INVALID_STATE, "NodeId": ""}, "InvalidState, no id")


def test_a_mapping_the_node_would_not_publish_is_invalid_param():
    node = Node()
    client = _sec1(node)
    # rmnode.mapping.check_mapping, the one check: empty, over 128 characters, a control character, the
    # reset report's user id (docs/protocol.md 4.2)
    for cmd in ({"UserID": "", "SecretKey": "k"}, {"UserID": "u", "SecretKey": ""}, {"UserID": "u" * 129, "SecretKey": "k"},
                {"UserID": "u", "SecretKey": "k" * 129}, {"UserID": "u\x01", "SecretKey": "k"},
                {"UserID": "esp-rmaker", "SecretKey": "k"}):
        resp = secured(node.prov.dispatch, client, 7, "cloud_user_assoc", pb.RMakerConfigPayload,
                       {"cmd_set_user_mapping": cmd})
        equal(resp["resp_set_user_mapping"]["Status"], fwtest.MAPPING_INVALID_PARAM, "InvalidParam for %r" % cmd)
    resp = secured(node.prov.dispatch, client, 7, "cloud_user_assoc", pb.RMakerConfigPayload, {"msg": 0})
    equal(resp["resp_set_user_mapping"]["Status"], fwtest.MAPPING_INVALID_PARAM, "no command")
    equal(node.store.get("pending_mapping"), None, "nothing stored")
    equal(node.events, [("session", 7)], "mapping callback never called")


def test_ssid_and_passphrase_limits():
    node = Node()
    client = _sec1(node)
    cases = [({"ssid": b"s" * 33, "passphrase": b"p" * 8}, 4), ({"ssid": b"s" * 32, "passphrase": b"p" * 65}, 4),
             ({"ssid": b"", "passphrase": b"p" * 8}, 4), ({"ssid": b"s", "passphrase": b"p", "bssid": b"\x01"}, 4),
             ({"ssid": b"s" * 32, "passphrase": b"p" * 64}, 0)]
    for cmd, status in cases:
        got = _config(node, client, {"msg": 2, "cmd_set_config": cmd})["resp_set_config"]["status"]
        equal(got, status, "SetConfig %d/%d bytes" % (len(cmd["ssid"]), len(cmd["passphrase"])))
    equal(node.station.joins, [], "nothing joined")


def test_apply_without_set_config_fails():
    node = Node()
    client = _sec1(node)
    equal(_config(node, client, {"msg": 4})["resp_apply_config"]["status"], fwtest.STATUS_INTERNAL_ERROR, "apply")
    equal(_config(node, client, {"cmd_get_status": {}})["resp_get_status"]["sta_state"], fwtest.STA_DISCONNECTED, "idle")


def test_failed_join_then_ctrl_reset_then_retry():
    node = Node()
    client = _sec1(node)
    _config(node, client, {"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"wrong-pw"}})
    _config(node, client, {"msg": 4})
    node.station.current = node.station.StationStatus(fwtest.STA_CONNECTION_FAILED, fwtest.FAIL_AUTH_ERROR)
    status = _config(node, client, {"cmd_get_status": {}})["resp_get_status"]
    equal((status["sta_state"], status["fail_reason"]), (fwtest.STA_CONNECTION_FAILED, fwtest.FAIL_AUTH_ERROR), "AuthError")
    raw = node.prov.dispatch(7, "prov-config", client.crypt(b"\x52\x00"))
    check(b"\x50\x00" in client.crypt(raw), "fail_reason AuthError written although 0")
    reset = secured(node.prov.dispatch, client, 7, "prov-ctrl", pb.WiFiCtrlPayload, {"msg": 1, "cmd_ctrl_reset": {}})
    equal((reset["msg"], reset["status"]), (fwtest.CTRL_RESP_RESET, 0), "reset reply")
    equal(node.events[-1], "reset", "on_reset called")
    _config(node, client, {"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"right-pw"}})
    equal(_config(node, client, {"msg": 4})["resp_apply_config"]["status"], 0, "apply again")
    equal([j[1] for j in node.station.joins], [b"wrong-pw", b"right-pw"], "two joins")


def _logged(fn):
    """Run fn(); return the log lines it wrote."""
    from rmnode import log

    lines = []
    log.sink = lambda line: lines.append(line) or True
    try:
        fn()
    finally:
        log.sink = None
    return lines


def test_the_same_credentials_during_their_join_are_taken_and_nothing_restarts():
    """A client interrupted after ApplyConfig runs again (docs/protocol.md 2.4): in its new session the same
    credentials are Success, ApplyConfig again is Success without a second join, and the status names the
    network being joined."""
    node = Node()
    client = _sec1(node)
    _config(node, client, {"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"pw123456"}})
    _config(node, client, {"msg": 4})
    again = _sec1(node, session_id=8)
    equal(_config(node, again, {"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"pw123456"}},
                  session_id=8)["resp_set_config"]["status"], 0, "the same credentials again")
    equal(_config(node, again, {"msg": 4}, session_id=8)["resp_apply_config"]["status"], 0, "ApplyConfig again")
    equal(node.station.joins, [(b"home", b"pw123456", None)], "one join, not restarted")
    status = _config(node, again, {"cmd_get_status": {}}, session_id=8)["resp_get_status"]
    equal((status["sta_state"], status["connected"]["ssid"]), (fwtest.STA_CONNECTING, b"home"), "joining home")


def test_other_credentials_during_a_join_are_refused_but_not_as_an_internal_error():
    node = Node()
    client = _sec1(node)
    _config(node, client, {"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"pw123456"}})
    _config(node, client, {"msg": 4})
    replies = []
    lines = _logged(lambda: replies.append(_config(node, client, {"msg": 2, "cmd_set_config": {
        "ssid": b"office", "passphrase": b"pw123456"}})))
    equal(replies[0]["resp_set_config"]["status"], fwtest.STATUS_INVALID_ARGUMENT, "refused, the node is not broken")
    equal([line.split(": ", 1)[1] for line in lines],
          ["SetConfig refused: joining home; wait for its result or send prov-ctrl reset first"], "one line")
    equal(node.station.joins, [(b"home", b"pw123456", None)], "the join goes on")
    node.station.current = node.station.StationStatus(fwtest.STA_CONNECTION_FAILED, fwtest.FAIL_AUTH_ERROR)
    equal(_config(node, client, {"msg": 2, "cmd_set_config": {"ssid": b"office", "passphrase": b"pw123456"}})
          ["resp_set_config"]["status"], 0, "once that join failed, new credentials are taken")


def test_from_the_irq_handler_the_same_credentials_before_the_join_started_are_taken_once():
    node = Node()
    dispatch = _from_irq(node)
    client = sec1_session(dispatch, 7, b"abcd1234")
    config = lambda req: secured(dispatch, client, 7, "prov-config", pb.WiFiConfigPayload, req)
    for _ in range(2):
        equal(config({"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"pw123456"}})
              ["resp_set_config"]["status"], 0, "SetConfig")
        equal(config({"msg": 4})["resp_apply_config"]["status"], 0, "ApplyConfig")
    equal(config({"cmd_get_status": {}})["resp_get_status"]["connected"]["ssid"], b"home", "joining home")
    node.prov.run_deferred()
    check(not node.prov.run_deferred(), "one join asked for")
    equal(node.station.joins, [(b"home", b"pw123456", None)], "joined once")


def test_network_not_found_reported():
    node = Node()
    client = _sec1(node)
    _config(node, client, {"msg": 2, "cmd_set_config": {"ssid": b"gone", "passphrase": b"x" * 8}})
    _config(node, client, {"msg": 4})
    node.station.current = node.station.StationStatus(fwtest.STA_CONNECTION_FAILED, fwtest.FAIL_NETWORK_NOT_FOUND)
    status = _config(node, client, {"cmd_get_status": {}})["resp_get_status"]
    equal(status["fail_reason"], fwtest.FAIL_NETWORK_NOT_FOUND, "NetworkNotFound")


def test_scan_start_status_and_pages():
    aps = [{"ssid": ("ap%d" % i).encode(), "bssid": bytes([i] * 6), "channel": 1 + i % 11, "rssi": -30 - i, "auth": 3}
           for i in range(10)]
    node = Node(scan_results=aps)
    client = _sec1(node)
    scan = lambda req: secured(node.prov.dispatch, client, 7, "prov-scan", pb.WiFiScanPayload, req)
    start = scan({"msg": 0, "cmd_scan_start": {"blocking": True, "group_channels": 5}})
    equal((start["msg"], start["status"]), (1, 0), "scan started")
    status = scan({"msg": 2, "cmd_scan_status": {}})["resp_scan_status"]
    equal((status["scan_finished"], status["result_count"]), (True, 10), "scan status")
    got = []
    for start_index in range(0, 10, 4):
        count = min(4, 10 - start_index)
        page = scan({"msg": 4, "cmd_scan_result": {"start_index": start_index, "count": count}})
        got.extend(page["resp_scan_result"]["entries"])
    equal(got, aps, "all entries in order")
    bad = scan({"msg": 4, "cmd_scan_result": {"start_index": 8, "count": 4}})
    equal((bad["status"], bad["resp_scan_result"]["entries"]), (fwtest.STATUS_INVALID_ARGUMENT, []), "page past end")


def test_secured_request_before_handshake_is_refused():
    node = Node()
    e = raises(protocomm.SessionError, node.prov.dispatch, 5, "prov-config", b"\x52\x00")
    check("handshake" in str(e), "message says why: %s" % e)
    # a session opened but not finished
    client = Sec1Client(b"abcd1234")
    node.prov.dispatch(5, "prov-session", client.cmd0())
    raises(protocomm.SessionError, node.prov.dispatch, 5, "prov-config", b"\x52\x00")


def test_wrong_pop_then_correct_session():
    node = Node()
    raises(protocomm.HandshakeFailed, sec1_session, node.prov.dispatch, 1, b"not-the-pop")
    raises(protocomm.SessionError, node.prov.dispatch, 1, "prov-config", b"\x52\x00")
    client = sec1_session(node.prov.dispatch, 2, b"abcd1234")
    equal(_config(node, client, {"cmd_get_status": {}}, 2)["msg"], 1, "new session works")


def test_wrong_sec_ver_refused():
    node = Node()
    e = raises(protocomm.HandshakeFailed, node.prov.dispatch, 1, "prov-session", bytes.fromhex("5203a20100"))
    check("version" in str(e), "message: %s" % e)
    node0 = Node(sec_ver=0)
    raises(protocomm.HandshakeFailed, node0.prov.dispatch, 1, "prov-session", Sec1Client(b"").cmd0())


def test_stale_and_foreign_session_ids():
    node = Node()
    first = sec1_session(node.prov.dispatch, 10, b"abcd1234")
    raises(protocomm.SessionError, node.prov.dispatch, 99, "prov-config", first.crypt(b"\x52\x00"))
    # the foreign id did not disturb session 10 (its stream did advance on our side only)
    second = sec1_session(node.prov.dispatch, 11, b"abcd1234")  # replaces 10 (one session at a time)
    raises(protocomm.SessionError, node.prov.dispatch, 10, "prov-config", b"\x52\x00")
    equal(_config(node, second, {"cmd_get_status": {}}, 11)["msg"], 1, "current session")
    node.prov.session_closed(11)
    raises(protocomm.SessionError, node.prov.dispatch, 11, "prov-config", second.crypt(b"\x52\x00"))


def test_session_dies_after_a_bad_request():
    node = Node()
    client = _sec1(node)
    e = raises(protocomm.BadRequest, node.prov.dispatch, 7, "prov-config", client.crypt(b"\xff\xff\xff"))
    check("undecodable" in str(e), "message: %s" % e)
    e = raises(protocomm.SessionError, node.prov.dispatch, 7, "prov-config", client.crypt(b"\x52\x00"))
    check("unusable" in str(e), "message: %s" % e)
    # a new handshake on the same id revives it
    client = _sec1(node)
    equal(_config(node, client, {"cmd_get_status": {}})["msg"], 1, "after new handshake")


def test_unknown_endpoint_and_msg():
    node = Node()
    equal(sorted(node.prov.endpoints), ["cloud_user_assoc", "proto-ver", "prov-config", "prov-ctrl", "prov-scan",
                                        "prov-session"], "endpoints")
    raises(protocomm.UnknownEndpoint, node.prov.dispatch, 7, "ch_resp", b"")
    raises(protocomm.UnknownEndpoint, node.prov.dispatch, 7, "rmaker_claim", b"")
    client = _sec1(node)
    raises(protocomm.BadRequest, node.prov.dispatch, 7, "prov-ctrl", client.crypt(b"\x08\x07"))
    client = _sec1(node)
    # other msg on cloud_user_assoc: empty OK reply (docs/protocol.md 4.2)
    equal(node.prov.dispatch(7, "cloud_user_assoc", client.crypt(b"\x08\x01")), b"", "empty reply")


def test_handler_bug_becomes_internal_error():
    node = Node()
    node.prov.station = None  # GetStatus after apply would now fail with AttributeError
    node.prov._applied = True
    client = _sec1(node)
    e = raises(protocomm.InternalError, node.prov.dispatch, 7, "prov-config", client.crypt(b"\x52\x00"))
    check(isinstance(e, protocomm.ProtocommError), "a ProtocommError")


def _from_irq(node):
    """dispatch as the BLE IRQ handler calls it: nothing may wait (docs/protocol.md 1.2)."""
    return lambda session_id, endpoint, body: node.prov.dispatch(session_id, endpoint, body, False)


class CountingStation(FakeStation):
    """A station whose join and scan must not be started from a BLE IRQ handler: it counts them."""

    def __init__(self, scan_results=None):
        FakeStation.__init__(self, scan_results)
        self.scans = 0

    def scan(self):
        self.scans += 1
        return FakeStation.scan(self)


def test_from_the_irq_handler_apply_only_asks_the_main_task_to_join():
    node = Node()
    dispatch = _from_irq(node)
    client = sec1_session(dispatch, 7, b"abcd1234")
    config = lambda req: secured(dispatch, client, 7, "prov-config", pb.WiFiConfigPayload, req)
    config({"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"pw123456"}})
    equal(config({"msg": 4})["resp_apply_config"]["status"], 0, "ApplyConfig answered at once")
    equal(node.station.joins, [], "WLAN.connect() not called in the handler")
    equal(config({"cmd_get_status": {}})["resp_get_status"]["sta_state"], fwtest.STA_CONNECTING,
          "Connecting while the main task has yet to start the join")
    check(node.prov.run_deferred(), "the main task starts it")
    equal(node.station.joins, [(b"home", b"pw123456", None)], "joined from the main task")
    equal(node.events[-1], ("applied", b"home"), "the node told, from the main task")
    check(not node.prov.run_deferred(), "nothing more to do")
    equal(config({"cmd_get_status": {}})["resp_get_status"]["sta_state"], fwtest.STA_CONNECTING, "the driver's state")


def test_a_status_asked_while_the_main_task_starts_the_join_says_connecting():
    """On a board the BLE IRQ handler can run between any two bytecodes of the main task (the NimBLE task
    takes the GIL whenever the VM lets it go): a GetStatus that lands after the main task took the join
    up but before the driver says Connecting must not answer Disconnected, which ends the client's wait."""
    node = Node()
    dispatch = _from_irq(node)
    client = sec1_session(dispatch, 7, b"abcd1234")
    config = lambda req: secured(dispatch, client, 7, "prov-config", pb.WiFiConfigPayload, req)
    seen = []
    join = node.station.connect

    def connect_with_a_status_request_first(ssid, passphrase, bssid=None):
        seen.append(config({"cmd_get_status": {}})["resp_get_status"]["sta_state"])
        join(ssid, passphrase, bssid)

    node.station.connect = connect_with_a_status_request_first
    config({"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"pw123456"}})
    config({"msg": 4})
    check(node.prov.run_deferred(), "the main task starts the join")
    equal(seen, [fwtest.STA_CONNECTING], "Connecting while the join starts")
    equal(config({"cmd_get_status": {}})["resp_get_status"]["sta_state"], fwtest.STA_CONNECTING, "and after")


def test_from_the_irq_handler_a_join_that_cannot_start_reports_failure():
    node = Node()
    dispatch = _from_irq(node)
    client = sec1_session(dispatch, 7, b"abcd1234")
    config = lambda req: secured(dispatch, client, 7, "prov-config", pb.WiFiConfigPayload, req)

    def refuse(ssid, passphrase, bssid=None):
        raise OSError(5, "driver gone")

    node.station.connect = refuse
    config({"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"pw123456"}})
    config({"msg": 4})
    node.prov.run_deferred()
    status = config({"cmd_get_status": {}})["resp_get_status"]
    equal((status["sta_state"], status["fail_reason"]), (fwtest.STA_CONNECTION_FAILED, 1), "failed, not Connecting forever")


def test_from_the_irq_handler_a_scan_start_is_answered_from_the_last_scan():
    aps = [{"ssid": b"home", "bssid": b"\x02" * 6, "channel": 6, "rssi": -40, "auth": 3}]
    node = Node()
    node.prov.station = node.station = CountingStation(aps)
    node.prov.scan_wanted = True
    node.prov.run_deferred()  # as the node does before it starts advertising
    equal(node.station.scans, 1, "one scan before BLE")
    dispatch = _from_irq(node)
    client = sec1_session(dispatch, 7, b"abcd1234")
    scan = lambda req: secured(dispatch, client, 7, "prov-scan", pb.WiFiScanPayload, req)
    equal(scan({"msg": 0, "cmd_scan_start": {"blocking": True}})["status"], 0, "started")
    equal(node.station.scans, 1, "no WLAN.scan() in the handler")
    status = scan({"msg": 2, "cmd_scan_status": {}})["resp_scan_status"]
    equal((status["scan_finished"], status["result_count"]), (True, 1), "finished at once, as a blocking start")
    equal(scan({"msg": 4, "cmd_scan_result": {"start_index": 0, "count": 1}})["resp_scan_result"]["entries"], aps,
          "the entries")
    node.station.scan_results = aps + [{"ssid": b"cafe", "bssid": b"\x03" * 6, "channel": 1, "rssi": -70, "auth": 0}]
    check(node.prov.run_deferred(), "the main task scans again for the next start")
    equal(scan({"msg": 2, "cmd_scan_status": {}})["resp_scan_status"]["result_count"], 1,
          "never swapped under a client paging through results")
    scan({"msg": 0, "cmd_scan_start": {}})
    equal(scan({"msg": 2, "cmd_scan_status": {}})["resp_scan_status"]["result_count"], 2, "the newer scan from its next start")
