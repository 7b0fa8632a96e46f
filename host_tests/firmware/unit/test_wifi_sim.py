"""rmnode.wifi and the provisioning endpoints against the virtual board's simulated ESP32 `network`
(tools/rmkit/vboard/sim/vb_network.py), driven by an air file.
# unix-port only: the simulation needs MicroPython's vfs and time.ticks_ms
The runner sets VBOARD_MAC=24:0a:c4:1a:2b:3c and VBOARD_AIR=<tmp>/air.json before this imports."""

import json
import os
import time

from rmnode import pb
from rmnode.prov_endpoints import Provisioning
from rmnode.wifi import Wifi
import fwtest
from fwtest import check, equal, FakeConfig, sec1_session, secured

AIR = {"scan_s": 0.05, "aps": [
    {"ssid": "home", "password": "right-pw", "channel": 11, "rssi": -45, "bssid": "02:00:00:00:00:01",
     "join_s": 0.05, "ip": "127.0.0.1"},
    {"ssid": "cafe", "channel": 1, "rssi": -70, "join_s": 0.05},
    {"ssid": "flaky", "password": "x" * 8, "fail": "handshake", "join_s": 0.05},
    {"ssid": "secret", "password": "y" * 8, "hidden": True, "rssi": -60, "join_s": 0.05},
    {"ssid": "old-router", "password": "z" * 8, "auth_fail_reason": 2, "join_s": 0.05},
]}


def _network():
    with open(os.getenv("VBOARD_AIR"), "w") as f:
        f.write(json.dumps(AIR))
    import vb_network
    return vb_network


def _wait(wifi, states, timeout_s=3):
    deadline = time.ticks_add(time.ticks_ms(), int(timeout_s * 1000))
    while time.ticks_diff(deadline, time.ticks_ms()) > 0:
        wifi.is_connected()  # as the node's loops do: retries a join the driver refused (status() never does)
        st = wifi.status()
        if st.state in states:
            return st
        time.sleep_ms(10)  # poll interval (this helper runs under MicroPython too: no support.wait there)
    raise AssertionError("station stayed in state %d" % wifi.status().state)


def test_sim_mac_and_scan():
    wifi = Wifi(_network())
    equal(wifi.mac(), bytes([0x24, 0x0A, 0xC4, 0x1A, 0x2B, 0x3C]), "mac")
    aps = wifi.scan()
    equal([ap["ssid"] for ap in aps], [b"home", b"flaky", b"old-router", b"cafe"],
          "strongest first, the hidden network left out")
    raw = _network().WLAN(0).scan()
    hidden = [entry for entry in raw if not entry[0]]
    equal([(entry[3], entry[5]) for entry in hidden], [(-60, False)],
          "hidden AP listed with an empty SSID (and, as on the ESP32 port, hidden=False)")
    equal((aps[0]["channel"], aps[0]["auth"], aps[0]["bssid"]), (11, 3, b"\x02\x00\x00\x00\x00\x01"), "home")
    equal(aps[3]["auth"], 0, "open network")


def test_sim_wrong_password_then_right_one():
    wifi = Wifi(_network())
    wifi.connect(b"home", b"wrong-pw")
    st = _wait(wifi, (fwtest.STA_CONNECTION_FAILED,))
    equal(st.fail_reason, fwtest.FAIL_AUTH_ERROR, "AuthError")
    wifi.connect(b"home", b"right-pw")
    st = _wait(wifi, (fwtest.STA_CONNECTED,))
    # no scan since the join: the BSSID is unknown (the ESP32 port cannot tell it), the rest is
    equal((st.ip4_addr, st.ssid, st.channel, st.auth_mode, st.bssid),
          ("127.0.0.1", b"home", 11, 3, b""), "connected details")
    wifi.scan()
    equal(wifi.status().bssid, b"\x02\x00\x00\x00\x00\x01", "BSSID from the last scan")
    wifi.disconnect()
    equal(wifi.status().state, fwtest.STA_DISCONNECTED, "after disconnect")


def test_sim_wrong_password_reads_connecting_until_the_retries_run_out_then_reason_15():
    net = _network()
    wifi = Wifi(net)
    sta = net.WLAN(net.STA_IF)
    # the simulation's clock, stepped by hand: one attempt (join_s 50 ms) fails, and not all of them
    clock = [time.ticks_ms()]
    real_now, net._now = net._now, lambda: clock[0]
    try:
        wifi.connect(b"home", b"wrong-pw")
        equal(sta.status(), net.STAT_CONNECTING, "first attempt")
        clock[0] = time.ticks_add(clock[0], 70)
        equal((sta.status(), net._sta.attempts), (net.STAT_CONNECTING, 1), "one attempt failed, the driver retries")
        clock[0] = time.ticks_add(clock[0], 5000)  # past every retry
        st = _wait(wifi, (fwtest.STA_CONNECTION_FAILED,))
    finally:
        net._now = real_now
    equal((sta.status(), st.fail_reason), (15, fwtest.FAIL_AUTH_ERROR), "4-way handshake timeout = AuthError")
    wifi.connect(b"old-router", b"wrong-pw")
    equal(_wait(wifi, (fwtest.STA_CONNECTION_FAILED,)).fail_reason, fwtest.FAIL_AUTH_ERROR, "reason 2 = AuthError")
    equal(sta.status(), 2, "auth expire")
    wifi.disconnect()


def test_sim_connect_while_connecting_is_refused_by_the_driver_and_retried_by_wifi():
    net = _network()
    sta = net.WLAN(net.STA_IF)
    sta.active(True)
    sta.connect("home", "right-pw")
    e = fwtest.raises(OSError, sta.connect, "home", "right-pw")
    equal(str(e), "Wifi Internal Error", "the ESP32 port's error")
    sta.disconnect()
    fwtest.raises(OSError, sta.connect, "home", "right-pw")  # the aborted attempt still settles
    equal(sta.scan(), [], "no scan while the driver is busy")
    wifi = Wifi(net)
    wifi.connect(b"home", b"right-pw")  # disconnect + connect: refused at first, started later
    equal(wifi.status().state, fwtest.STA_CONNECTING, "connecting while the driver settles")
    equal(_wait(wifi, (fwtest.STA_CONNECTED,)).ssid, b"home", "joined after the retry")
    wifi.connect(b"home", b"right-pw")  # again while connected: no crash either
    equal(_wait(wifi, (fwtest.STA_CONNECTED,)).ssid, b"home", "joined again")
    wifi.disconnect()


def test_sim_access_point_follows_the_station_channel():
    net = _network()
    wifi = Wifi(net)
    wifi.ap_up("PROV_1a2b3c")
    ap = net.WLAN(net.AP_IF)
    ap.config(channel=1)
    wifi.connect(b"home", b"right-pw")
    _wait(wifi, (fwtest.STA_CONNECTED,))
    equal(ap.config("channel"), 11, "one radio: the AP moved to the station's channel")
    wifi.disconnect()
    wifi.ap_down()


def test_sim_network_not_found_and_handshake_failure():
    wifi = Wifi(_network())
    wifi.connect(b"nowhere", b"whatever1")
    equal(_wait(wifi, (fwtest.STA_CONNECTION_FAILED,)).fail_reason, fwtest.FAIL_NETWORK_NOT_FOUND, "missing AP")
    wifi.connect(b"flaky", b"x" * 8)
    equal(_wait(wifi, (fwtest.STA_CONNECTION_FAILED,)).fail_reason, fwtest.FAIL_AUTH_ERROR, "handshake timeout")
    wifi.connect(b"cafe", b"")
    equal(_wait(wifi, (fwtest.STA_CONNECTED,)).auth_mode, 0, "open network joined")
    wifi.disconnect()


def test_sim_access_point():
    net = _network()
    wifi = Wifi(net)
    wifi.ap_up("PROV_1a2b3c")
    ap = net.WLAN(net.AP_IF)
    equal((ap.config("essid"), ap.config("authmode"), ap.active()), ("PROV_1a2b3c", 0, True), "AP up")
    wifi.ap_down()
    check(not wifi.ap_active(), "AP down")


def test_sim_provisioning_wrong_password_reset_retry():
    wifi = Wifi(_network())
    prov = Provisioning(FakeConfig(1, "pop1", "node-sim"), wifi, lambda u, k: None)
    client = sec1_session(prov.dispatch, 1, b"pop1")

    def config(request):
        return secured(prov.dispatch, client, 1, "prov-config", pb.WiFiConfigPayload, request)

    def status():
        return config({"cmd_get_status": {}})["resp_get_status"]

    config({"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"wrong-pw"}})
    config({"msg": 4})
    deadline = time.ticks_add(time.ticks_ms(), 3000)
    while status()["sta_state"] == fwtest.STA_CONNECTING and time.ticks_diff(deadline, time.ticks_ms()) > 0:
        time.sleep_ms(10)  # poll interval
    st = status()
    equal((st["sta_state"], st["fail_reason"]), (fwtest.STA_CONNECTION_FAILED, fwtest.FAIL_AUTH_ERROR), "AuthError")
    reset = secured(prov.dispatch, client, 1, "prov-ctrl", pb.WiFiCtrlPayload, {"msg": 1, "cmd_ctrl_reset": {}})
    equal(reset["status"], 0, "reset")
    wifi.scan()  # as a client's prov-scan would: the connected state then carries the BSSID
    config({"msg": 2, "cmd_set_config": {"ssid": b"home", "passphrase": b"right-pw"}})
    config({"msg": 4})
    while status()["sta_state"] == fwtest.STA_CONNECTING and time.ticks_diff(deadline, time.ticks_ms()) > 0:
        time.sleep_ms(10)  # poll interval
    st = status()
    equal(st["sta_state"], fwtest.STA_CONNECTED, "connected")
    equal(st["connected"], {"ip4_addr": "127.0.0.1", "auth_mode": 3, "ssid": b"home",
                            "bssid": b"\x02\x00\x00\x00\x00\x01", "channel": 11}, "connected state")
    wifi.disconnect()


def test_sim_a_32_character_ssid_reads_back_with_the_passphrase_as_on_the_esp32_port_and_wifi_keeps_its_own():
    # ports/esp32/network_wlan.c: config('ssid') is strlen of a 32-byte field the password follows
    net = _network()
    ssid = "S" * 32
    with open(os.getenv("VBOARD_AIR"), "w") as f:
        f.write(json.dumps({"scan_s": 0.05, "aps": [{"ssid": ssid, "password": "long-passphrase", "join_s": 0.05,
                                                      "ip": "127.0.0.1"}]}))
    try:
        wifi = Wifi(net)
        wifi.connect(ssid.encode(), b"long-passphrase")
        status = _wait(wifi, (fwtest.STA_CONNECTED,))
        equal(net.WLAN(net.STA_IF).config("ssid"), ssid + "long-passphrase", "the port's reading")
        equal(status.ssid, ssid.encode(), "the status carries the SSID given, never the passphrase")
        wifi.disconnect()
    finally:
        _network()  # the usual air back
