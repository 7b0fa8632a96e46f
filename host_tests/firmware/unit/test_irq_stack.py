"""Every request a BLE client can make is served inside the write's IRQ handler (docs/protocol.md 1.2), where an
ESP32 gives Python 4096 bytes of C stack. Each is served here with a margin less: with_c_stack_left's own two frames
(a function with try/except and a lambda, ~850 bytes on the unix port) stand for the handler's frame
(rmnode.ble.ProvBleServer._irq, ~500 bytes), and MARGIN is kept free for what differs on a board (C frames of
littlefs, the collector). A call chain that grows past it fails here before it fails on a board (the virtual
board's handler gets exactly 4096 bytes). On CPython the requests just run."""

from rmnode import chal_resp, pb
from rmnode.mapping import MappingState
from rmnode.prov_endpoints import Provisioning
from rmnode.store import Store
from fwtest import FakeConfig, FakeStation, Sec1Client, check, equal, tmpdir, with_c_stack_left

MARGIN = 600
BUDGET = 4096 - MARGIN
RFC_KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721


def _node(sec_ver=1):
    state = MappingState(Store(tmpdir("irq_stack") + "/state.json"))
    aps = [{"ssid": b"home", "bssid": b"\x02" * 6, "channel": 6, "rssi": -40, "auth": 3}]
    prov = Provisioning(FakeConfig(sec_ver, "abcd1234" if sec_ver else ""), FakeStation(aps), state.set_pending,
                        on_session=lambda session_id: state.pending(),
                        chal_resp=chal_resp.ChallengeResponse("node-1", RFC_KEY))
    prov.scan_wanted = True
    prov.run_deferred()  # as the node does before it advertises
    chal_resp.ChallengeResponse("node-1", RFC_KEY).load_signer()
    return prov, state


def _from_handler(prov, endpoint, body):
    """prov's answer to `body` as the BLE IRQ handler gets it, with BUDGET bytes of C stack."""
    result = with_c_stack_left(BUDGET, lambda: prov.dispatch(7, endpoint, body, False))
    if isinstance(result, Exception):
        raise AssertionError("%s with %d bytes of C stack: %s: %s" % (endpoint, BUDGET, type(result).__name__, result))
    return result


def _secured(prov, client, endpoint, schema, request):
    return pb.decode(schema, client.crypt(_from_handler(prov, endpoint, client.crypt(pb.encode(schema, request)))))


def test_a_security_1_session_and_every_endpoint_fit_the_handlers_stack():
    prov, state = _node()
    _from_handler(prov, "proto-ver", b"---")
    client = Sec1Client(b"abcd1234")
    resp0 = _from_handler(prov, "prov-session", client.cmd0())  # X25519 twice
    client.check_resp1(_from_handler(prov, "prov-session", client.cmd1(resp0)))
    scan = _secured(prov, client, "prov-scan", pb.WiFiScanPayload, {"msg": 0, "cmd_scan_start": {"blocking": True}})
    equal(scan["status"], 0, "scan start")
    _secured(prov, client, "prov-scan", pb.WiFiScanPayload, {"msg": 2, "cmd_scan_status": {}})
    _secured(prov, client, "prov-scan", pb.WiFiScanPayload, {"msg": 4, "cmd_scan_result": {"start_index": 0, "count": 1}})
    assoc = _secured(prov, client, "cloud_user_assoc", pb.RMakerConfigPayload,
                     {"cmd_set_user_mapping": {"UserID": "user-1", "SecretKey": "secret-1"}})
    equal(assoc["resp_set_user_mapping"]["Status"], 0, "mapping stored on flash")
    check(state.pending() is not None, "and there it is")
    signed = _secured(prov, client, "ch_resp", pb.RMakerChRespPayload,
                      {"cmdChallengeResponsePayload": {"payload": b"q3Vd0Wk7hT2bXcNf9LmZsY8rAe1GuJpO"}})
    equal(signed["status"], 0, "challenge signed")
    for request in ({"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"pw123456"}}, {"msg": 4},
                    {"cmd_get_status": {}}):
        _secured(prov, client, "prov-config", pb.WiFiConfigPayload, request)


def test_a_security_0_session_fits_too():
    prov, _ = _node(sec_ver=0)
    equal(_from_handler(prov, "prov-session", bytes.fromhex("5203a20100")), bytes.fromhex("52050801aa0100"), "sec0")
