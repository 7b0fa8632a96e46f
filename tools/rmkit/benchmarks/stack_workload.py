"""A representative firmware workload for the stack-depth benchmark (rmkit bench): what a node does in
provisioning, the deepest phase, done the way esp-rainmaker-cli drives it, plus the bad requests whose
error paths go deepest, the MQTT packets and the mapping payload of the online phase.

Run on the MicroPython unix port with firmware/ and this folder on MICROPYPATH; with FW_STACK_PAD the
workload runs after that many bytes of C stack are burnt (esp32_stack.py). Prints "DONE" and exits 0
when every step did what it should, else raises.
"""

import os
import sys

if sys.implementation.name == "micropython" and ".frozen" not in sys.path:
    sys.path.append(".frozen")  # MICROPYPATH drops the frozen asyncio package that rmnode.mqtt imports

from rmnode import log, mqtt, pb, protocomm
from rmnode.mapping import mapping_payload, reset_payload
from rmnode.prov_endpoints import Provisioning
from rmnode.store import Store
from rmnode.wifi import StationStatus
from sec1_client import Sec1Client

log.level = log.ERROR

CONNECTING, CONNECTED = 1, 0  # WifiStationState
APS = [{"ssid": ("ap%d" % i).encode(), "bssid": bytes([i] * 6), "channel": 1 + i % 11, "rssi": -30 - i, "auth": 3}
       for i in range(10)]


class Config:
    sec_ver, pop, node_id = 1, "abcd1234", "node-1"


class Station:
    """rmnode.wifi.Wifi as the endpoints see it: a join connects on the second status read."""

    def __init__(self):
        self.current = StationStatus(2)
        self.reads = 0

    def connect(self, ssid, passphrase, bssid=None):
        self.current, self.reads = StationStatus(CONNECTING), 0

    def disconnect(self):
        self.current = StationStatus(2)

    def status(self):
        self.reads += 1
        if self.current.state == CONNECTING and self.reads > 1:
            self.current = StationStatus(CONNECTED, None, "198.51.100.7", b"home", b"\x01\x02\x03\x04\x05\x06", 6, 3)
        return self.current

    def scan(self):
        return list(APS)


def _expect(condition, what):
    if not condition:
        raise AssertionError(what)


def _refused(exc_type, fn, *args):
    try:
        fn(*args)
    except exc_type:
        return
    raise AssertionError("%s not raised" % exc_type.__name__)


def _session(prov, session_id, pop=b"abcd1234"):
    client = Sec1Client(pop)
    resp0 = prov.dispatch(session_id, "prov-session", client.cmd0())
    client.check_resp1(prov.dispatch(session_id, "prov-session", client.cmd1(resp0)))
    return client


def _secured(prov, client, session_id, endpoint, schema, request):
    reply = prov.dispatch(session_id, endpoint, client.crypt(pb.encode(schema, request)))
    return pb.decode(schema, client.crypt(reply))


def provisioning(tmp):
    store = Store(tmp + "/state.json")
    prov = Provisioning(Config(), Station(),
                        lambda user_id, key: store.set("pending_mapping", {"user_id": user_id, "secret_key": key}))
    prov.dispatch(7, "proto-ver", b"---")
    # wrong PoP first, then the real session
    _refused(protocomm.HandshakeFailed, _session, prov, 1, b"not-the-pop")
    client = _session(prov, 7)
    scan = lambda request: _secured(prov, client, 7, "prov-scan", pb.WiFiScanPayload, request)
    scan({"msg": 0, "cmd_scan_start": {"blocking": True, "group_channels": 5}})
    _expect(scan({"msg": 2, "cmd_scan_status": {}})["resp_scan_status"]["result_count"] == 10, "scan count")
    entries = []
    for start in range(0, 10, 4):
        page = scan({"msg": 4, "cmd_scan_result": {"start_index": start, "count": min(4, 10 - start)}})
        entries += page["resp_scan_result"]["entries"]
    _expect(entries == APS, "scan entries")
    reply = _secured(prov, client, 7, "cloud_user_assoc", pb.RMakerConfigPayload,
                     {"cmd_set_user_mapping": {"UserID": "user-1", "SecretKey": "secret-1"}})
    _expect(reply["resp_set_user_mapping"]["NodeId"] == "node-1", "mapping reply")
    config = lambda request: _secured(prov, client, 7, "prov-config", pb.WiFiConfigPayload, request)
    config({"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"pw123456"}})
    config({"msg": 4})
    states = [config({"cmd_get_status": {}})["resp_get_status"]["sta_state"] for _ in range(2)]
    _expect(states == [CONNECTING, CONNECTED], "station states %r" % states)
    _secured(prov, client, 7, "prov-ctrl", pb.WiFiCtrlPayload, {"msg": 1, "cmd_ctrl_reset": {}})
    # bad requests: an undecodable body kills the session, an unknown endpoint is refused
    _refused(protocomm.BadRequest, prov.dispatch, 7, "prov-config", client.crypt(b"\xff\xff\xff"))
    _refused(protocomm.SessionError, prov.dispatch, 7, "prov-config", client.crypt(b"\x52\x00"))
    _refused(protocomm.UnknownEndpoint, prov.dispatch, 7, "rmaker_claim", b"")
    _expect(Store(store.path).get("pending_mapping") == {"user_id": "user-1", "secret_key": "secret-1"}, "persisted")


def online():
    payload = mapping_payload("node-1", "user-1", "secret-1", True)
    packets = [mqtt.connect_packet("node-1", 120), mqtt.publish_packet("node/node-1/user/mapping", payload, 1, 1),
               mqtt.publish_packet("node/node-1/user/mapping", reset_payload("node-1"), 1, 2),
               mqtt.publish_packet("t", b"x" * 200, 1, 3)]
    _expect(all(len(packet) > 2 for packet in packets), "packets")


def main():
    tmp = "%s/rmkit_stack_%d" % (os.getenv("FW_TMP") or "/tmp", int.from_bytes(os.urandom(4), "big"))
    os.mkdir(tmp)
    provisioning(tmp)
    online()
    print("DONE")


if __name__ == "__main__":
    if sys.implementation.name == "micropython":
        import esp32_stack

        esp32_stack.run(main)
    else:
        main()
