"""rmnode.wifi against a fake of the ESP32 `network` API (status codes, scan tuples, AP config)."""

from rmnode.wifi import Wifi
import fwtest
from fwtest import check, equal


class FakeWLAN:
    def __init__(self, net, interface):
        self.net = net
        self.interface = interface
        self._active = False
        self.code = 1000
        self.connected = False
        self.settings = {"mac": b"\x24\x0a\xc4\x1a\x2b\x3c", "channel": 6}
        self.calls = []

    def active(self, value=None):
        if value is None:
            return self._active
        self._active = value

    def connect(self, ssid, key, bssid=None):
        self.calls.append(("connect", ssid, key, bssid))
        self.code = 1001

    def disconnect(self):
        self.calls.append(("disconnect",))
        self.code = 1000
        self.connected = False

    def status(self):
        return self.code

    def isconnected(self):
        return self.connected

    def ifconfig(self):
        return ("198.51.100.7", "255.255.255.0", "198.51.100.1", "198.51.100.1")

    def config(self, *args, **kwargs):
        if kwargs:
            self.settings.update(kwargs)
            return None
        if args[0] not in self.settings:
            raise ValueError("unknown config param")
        return self.settings[args[0]]

    def scan(self):
        return [(b"weak", b"\x01" * 6, 1, -80, 3, False), (b"home", b"\x02" * 6, 6, -40, 4, False)]


class FakeNetwork:
    STA_IF = 0
    AP_IF = 1
    STAT_IDLE = 1000
    STAT_CONNECTING = 1001
    STAT_GOT_IP = 1010
    STAT_NO_AP_FOUND = 201
    STAT_WRONG_PASSWORD = 202
    AUTH_OPEN = 0

    def __init__(self):
        self.interfaces = {}

    def WLAN(self, interface):
        if interface not in self.interfaces:
            self.interfaces[interface] = FakeWLAN(self, interface)
        return self.interfaces[interface]


def test_status_mapping():
    net = FakeNetwork()
    wifi = Wifi(net)
    sta = net.WLAN(net.STA_IF)
    equal(wifi.status().state, fwtest.STA_DISCONNECTED, "before any join")
    wifi.connect(b"home", b"pw123456")
    equal(sta.calls[-1], ("connect", "home", "pw123456", None), "connect call (str, like most ESP32 code)")
    equal(wifi.status().state, fwtest.STA_CONNECTING, "connecting")
    sta.code = 202
    st = wifi.status()
    equal((st.state, st.fail_reason), (fwtest.STA_CONNECTION_FAILED, fwtest.FAIL_AUTH_ERROR), "wrong password")
    for code in (2, 4, 14, 15, 204, 205):  # what ESP32s report for a wrong passphrase
        sta.code = code
        equal(wifi.status().fail_reason, fwtest.FAIL_AUTH_ERROR, "reason %d" % code)
    sta.code = 201
    equal(wifi.status().fail_reason, fwtest.FAIL_NETWORK_NOT_FOUND, "no AP")
    sta.code = 203
    equal(wifi.status().state, fwtest.STA_CONNECTION_FAILED, "other codes fail")
    sta.code = 1010
    sta.connected = True
    st = wifi.status()
    equal((st.state, st.ip4_addr, st.ssid, st.channel), (fwtest.STA_CONNECTED, "198.51.100.7", b"home", 6), "got IP")
    wifi.disconnect()
    equal(wifi.status().state, fwtest.STA_DISCONNECTED, "after disconnect")


def test_connected_details_from_last_scan():
    net = FakeNetwork()
    wifi = Wifi(net)
    results = wifi.scan()
    equal([r["ssid"] for r in results], [b"home", b"weak"], "strongest first")
    equal(results[0], {"ssid": b"home", "bssid": b"\x02" * 6, "channel": 6, "rssi": -40, "auth": 4}, "entry")
    wifi.connect(b"home", b"pw")
    sta = net.WLAN(net.STA_IF)
    sta.code, sta.connected = 1010, True
    st = wifi.status()
    equal((st.bssid, st.auth_mode), (b"\x02" * 6, 4), "bssid and auth from scan")


def test_mac_and_access_point():
    net = FakeNetwork()
    wifi = Wifi(net)
    equal(wifi.mac(), b"\x24\x0a\xc4\x1a\x2b\x3c", "mac")
    check(not wifi.ap_active(), "AP down at start")
    wifi.ap_up("PROV_1a2b3c")
    ap = net.WLAN(net.AP_IF)
    check(wifi.ap_active(), "AP up")
    equal((ap.settings["essid"], ap.settings["authmode"]), ("PROV_1a2b3c", 0), "open AP named after the service")
    wifi.ap_down()
    check(not wifi.ap_active(), "AP down")


def test_a_busy_driver_refusing_connect_is_retried_not_raised():
    net = FakeNetwork()
    wifi = Wifi(net)
    sta = net.WLAN(net.STA_IF)
    refusals = [OSError("Wifi Internal Error")] * 2
    real_connect = sta.connect

    def connect(ssid, key, bssid=None):
        if refusals:
            raise refusals.pop()
        real_connect(ssid, key, bssid)

    sta.connect = connect
    wifi.connect(b"home", b"pw123456")  # refused: no exception
    equal(wifi.status().state, fwtest.STA_CONNECTING, "connecting, not started yet")
    equal(sta.calls, [("disconnect",)], "status() never retries: a BLE IRQ handler asks it")
    check(not wifi.is_connected(), "second refusal")
    equal(sta.calls, [("disconnect",)], "not started yet")
    check(not wifi.is_connected(), "third try starts it")
    equal(sta.calls[-1], ("connect", "home", "pw123456", None), "started")
    equal(wifi.status().state, fwtest.STA_CONNECTING, "now the driver's own state")


def test_the_status_reports_the_ssid_given_not_the_drivers():
    # ports/esp32/network_wlan.c reads the station's 32-byte SSID field with strlen: a 32-character SSID
    # comes back with the passphrase appended
    net = FakeNetwork()
    wifi = Wifi(net)
    sta = net.WLAN(net.STA_IF)
    ssid = b"S" * 32
    wifi.connect(ssid, b"secret-passphrase")
    sta.settings["ssid"] = (ssid + b"secret-passphrase").decode()
    sta.code, sta.connected = net.STAT_GOT_IP, True
    equal(wifi.status().ssid, ssid, "the SSID as given")


def test_hidden_networks_are_left_out_of_the_scan():
    net = FakeNetwork()
    sta = net.WLAN(net.STA_IF)
    sta.scan = lambda: [(b"", b"\x03" * 6, 1, -30, 3, True), (b"home", b"\x02" * 6, 6, -40, 4, False)]
    equal([r["ssid"] for r in Wifi(net).scan()], [b"home"], "no empty SSID")
