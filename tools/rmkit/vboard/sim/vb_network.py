# Simulated ESP32 `network` for the virtual board: the part of network.WLAN that firmware uses,
# driven by the "air" file (which access points exist, their passwords, faults).
# Installed as sys.modules["network"] by vb_boot.py. Sockets stay real: "connected" only changes
# what this module reports; the board reaches 127.0.0.1 either way.
#
# Behaviour follows ports/esp32/network_wlan.c (MicroPython 1.24-1.26), at least as strict as a board:
# - WLAN(STA_IF) / WLAN(AP_IF) are per-interface singletons; connect() needs active(True)
#   ("Wifi Not Started" otherwise); scan() needs the STA active.
# - status() (STA): STAT_GOT_IP when connected; STAT_NO_AP_FOUND (201) and STAT_WRONG_PASSWORD
#   (for reasons 202 and 205) at once, even while retrying; STAT_IDLE after disconnect();
#   STAT_CONNECTING while a connect is requested and the driver still has retries left
#   (config(reconnects=n); the default retries forever, so a wrong passphrase that fails with
#   reason 15 reads STAT_CONNECTING for good); the raw ESP-IDF reason once the retries ran out.
# - a wrong passphrase fails with reason 15 (4-way handshake timeout) unless the AP says otherwise
#   ("auth_fail_reason": 2, 202, 204, ...): what ESP32s report in the field, rarely 202.
# - connect() while an attempt is under way, or within _SETTLE_MS of a disconnect() that aborted
#   one (ESP-IDF handles the disconnect on its own task), raises OSError("Wifi Internal Error").
# - after a failure or a drop the station retries, as ESP32 does, until disconnect() or
#   config(reconnects=n) attempts; each retry re-reads the air, so an AP can appear later.
# - scan() blocks the whole interpreter for the air's "scan_s" (default 1.5 s; 1.5-3 s on a board),
#   lists hidden networks with an empty SSID, and returns [] when it cannot start (a connect is
#   under way). Entries: (ssid, bssid, channel, RSSI, authmode, False).
# - one radio: while the station is associated the AP runs on the station's channel.
# - config('mac') is bytes: STA = the board MAC, AP = board MAC + 1 (ESP32's derived MACs).
# - the AP interface reports VBOARD_AP_IP (the --softap host) in ifconfig(); a real ESP32 uses
#   192.168.4.1 (its SoftAP default).
# - connect(), scan() and an active() that changes the state wait for ESP-IDF's Wi-Fi task with the GIL
#   released: from a BLE IRQ handler that is a fault (vb_irq).
# - a fault a board can have: the air's "connect_block_s" makes connect() block the interpreter that long
#   (default 0), as esp_wifi_connect() does when the Wi-Fi task it waits for is wedged: a driver call that
#   does not return, for tests of the task watchdog.
#
# The air file (JSON; path in VBOARD_AIR, re-read whenever it changes - replace it atomically,
# new file + rename, as mtime has 1 s steps; a file that does not parse keeps the previous air) - rmkit/vboard/air.py validates it on the host:
#   {"scan_s": 1.5, "connect_block_s": 0,
#    "aps": [{"ssid": "home", "password": "secret123", "authmode": "WPA2_PSK", "rssi": -50,
#             "channel": 6, "bssid": "02:00:00:00:00:01", "hidden": false, "join_s": 0.3,
#             "ip": "127.0.0.1", "netmask": "255.0.0.0", "gateway": "127.0.0.1", "dns": "127.0.0.1",
#             "drop_after_s": null, "fail": null, "auth_fail_reason": 15}]}
# Only "ssid" is required. "authmode" defaults to WPA2_PSK with a password and OPEN without;
# "join_s" is how long an attempt takes (result: got IP or a failure); "drop_after_s" drops the
# link that long after it came up (STAT_BEACON_TIMEOUT, then the station retries); "fail" makes
# every attempt fail with "assoc" (STAT_ASSOC_FAIL) or "handshake" (STAT_HANDSHAKE_TIMEOUT);
# "hidden" APs are joinable and listed by scan() with an empty SSID.
import json
import os
import time
import vfs

import vb_esp32  # the internal-RAM model: esp_wifi_init() once, esp_wifi_start() while an interface is active
import vb_irq

STA_IF = 0
AP_IF = 1

STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
# ESP-IDF wifi_err_reason_t values, passed through by status()
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204
_REASON_ASSOC_LEAVE = 8
_REASON_4WAY_HANDSHAKE_TIMEOUT = 15
_REASON_CONNECTION_FAIL = 205
_SETTLE_MS = 100
_DEFAULT_SCAN_S = 1.5
_SOURCE = "ports/esp32/network_wlan.c"

AUTH_OPEN = 0
AUTH_WEP = 1
AUTH_WPA_PSK = 2
AUTH_WPA2_PSK = 3
AUTH_WPA_WPA2_PSK = 4
AUTH_WPA2_ENTERPRISE = 5
AUTH_WPA3_PSK = 6
AUTH_WPA2_WPA3_PSK = 7
AUTH_WAPI_PSK = 8
AUTH_OWE = 9

MODE_11B = 1
MODE_11G = 2
MODE_11N = 4
MODE_LR = 8

_AUTH_NAMES = {
    "OPEN": 0, "WEP": 1, "WPA_PSK": 2, "WPA2_PSK": 3, "WPA_WPA2_PSK": 4,
    "WPA2_ENTERPRISE": 5, "WPA3_PSK": 6, "WPA2_WPA3_PSK": 7, "WAPI_PSK": 8, "OWE": 9,
}
_FAIL_REASONS = {"assoc": STAT_ASSOC_FAIL, "handshake": STAT_HANDSHAKE_TIMEOUT}
_NO_IP = ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

_base_mac = bytes(int(part, 16) for part in os.getenv("VBOARD_MAC").split(":"))
_ap_ip = os.getenv("VBOARD_AP_IP") or "127.0.0.1"
_hostname = "mpy-esp32"


def _now():
    return time.ticks_ms()


def _after(t, seconds):
    return time.ticks_add(t, int(seconds * 1000))


class _Air:
    # The air file, read through an unmounted VfsPosix: `/` is the flash, the host path is not.
    def __init__(self, path):
        self.aps = []
        self.scan_s = _DEFAULT_SCAN_S
        self.connect_block_s = 0
        self._fs = None
        self._name = None
        self._stamp = None
        if path:
            cut = path.rfind("/")
            self._fs = vfs.VfsPosix(path[:cut] or "/")
            self._name = path[cut:]

    def refresh(self):
        if self._fs is None:
            return
        try:
            st = self._fs.stat(self._name)
            stamp = (st[1], st[6], st[8])  # inode too: mtime has 1 s steps
            if stamp == self._stamp:
                return
            f = self._fs.open(self._name, "r")
            try:
                data = json.loads(f.read())
            finally:
                f.close()
            aps = [_ap_record(ap) for ap in data.get("aps", [])]
            scan_s = float(data.get("scan_s", _DEFAULT_SCAN_S))
            connect_block_s = float(data.get("connect_block_s", 0))
        except Exception:  # being rewritten or removed: keep the previous air
            return
        self._stamp = stamp
        self.aps = aps
        self.scan_s = scan_s
        self.connect_block_s = connect_block_s

    def find(self, ssid, bssid=None, refresh=True):
        if refresh:
            self.refresh()
        for ap in self.aps:
            if ap["ssid"] == ssid and (bssid is None or ap["bssid"] == bssid):
                return ap
        return None


def _ap_record(ap):
    ssid = ap["ssid"]
    password = ap.get("password") or ""
    auth = ap.get("authmode")
    if auth is None:
        auth = AUTH_WPA2_PSK if password else AUTH_OPEN
    elif isinstance(auth, str):
        auth = _AUTH_NAMES[auth.upper().replace("AUTH_", "")]
    bssid = ap.get("bssid")
    if bssid:
        bssid = bytes(int(part, 16) for part in bssid.split(":"))
    else:  # stable made-up BSSID per SSID (locally administered)
        h = 0
        for ch in ssid.encode():
            h = (h * 31 + ch) & 0xFFFFFFFF
        bssid = bytes([0x02, 0x00, (h >> 24) & 255, (h >> 16) & 255, (h >> 8) & 255, h & 255])
    return {
        "ssid": ssid, "password": password, "authmode": auth, "bssid": bssid,
        "rssi": ap.get("rssi", -50), "channel": ap.get("channel", 6),
        "hidden": bool(ap.get("hidden", False)), "join_s": ap.get("join_s", 0.3),
        "ifconfig": (ap.get("ip", "127.0.0.1"), ap.get("netmask", "255.0.0.0"),
                     ap.get("gateway", "127.0.0.1"), ap.get("dns", "127.0.0.1")),
        "drop_after_s": ap.get("drop_after_s"), "fail": ap.get("fail"),
        "auth_fail_reason": ap.get("auth_fail_reason", _REASON_4WAY_HANDSHAKE_TIMEOUT),
    }


_air = _Air(os.getenv("VBOARD_AIR"))


class _Station:
    # the STA side of the radio; all timing is evaluated lazily on each call (no threads)
    def __init__(self):
        self.active = False
        self.mac = _base_mac
        self.ssid = ""
        self.password = ""
        self.bssid = None
        self.requested = False   # connect() called and not disconnect()ed
        self.connected = False   # associated and has an IP
        self.reason = 0          # last disconnect reason (0 = none)
        self.attempts = 0        # failed attempts since connect()
        self.max_attempts = 0    # config(reconnects=n) -> n + 1; 0 = retry forever
        self.attempt_at = None   # ticks_ms when the running attempt started
        self.up_at = None        # ticks_ms when the link came up
        self.ap = None
        self.static = None
        self.channel = 1
        self.settle_until = None  # ticks_ms until which an aborted connect still occupies the driver

    def start_attempt(self, at=None):
        self.attempt_at = _now() if at is None else at

    def update(self):
        # Replays every transition that fell due since the last call, at the time it fell due.
        _air.refresh()
        for _ in range(200):
            if not self._step():
                return

    def _step(self):
        now = _now()
        if self.connected:
            ap = _air.find(self.ssid, self.bssid, refresh=False)
            drop = ap["drop_after_s"] if ap else None
            if ap is None:
                dropped_at = now
            elif drop is not None and time.ticks_diff(now, _after(self.up_at, drop)) >= 0:
                dropped_at = _after(self.up_at, drop)
            else:
                return False
            self.connected = False
            self.reason = STAT_BEACON_TIMEOUT
            self.ap = None
            self.start_attempt(dropped_at)  # ESP32 reconnects on its own
            return True
        if not self.requested or self.attempt_at is None:
            return False
        ap = _air.find(self.ssid, self.bssid, refresh=False)
        done_at = _after(self.attempt_at, ap["join_s"] if ap else 0.5)  # no AP: a full channel scan
        if time.ticks_diff(now, done_at) < 0:
            return False
        if ap is None:
            reason = STAT_NO_AP_FOUND
        elif ap["fail"]:
            reason = _FAIL_REASONS.get(ap["fail"], STAT_ASSOC_FAIL)
        elif ap["authmode"] != AUTH_OPEN and self.password != ap["password"]:
            reason = ap["auth_fail_reason"]
        else:
            self.connected = True
            self.reason = 0
            self.attempts = 0
            self.up_at = done_at
            self.ap = ap
            self.channel = ap["channel"]
            self.attempt_at = None
            return True
        self.reason = reason
        self.attempts += 1
        if self.max_attempts and self.attempts >= self.max_attempts:
            self.attempt_at = None  # gave up
            return False
        self.start_attempt(done_at)
        return True

    def status(self):
        # the order of network_wlan.c's status() (v1.24-v1.26)
        self.update()
        if self.connected:
            return STAT_GOT_IP
        if self.reason in (STAT_NO_AP_FOUND, 210, 211, 212):  # shown at once, even while retrying
            return self.reason
        if self.reason in (STAT_WRONG_PASSWORD, _REASON_CONNECTION_FAIL):
            return STAT_WRONG_PASSWORD
        if self.reason == _REASON_ASSOC_LEAVE:
            return STAT_IDLE
        if self.requested and self.attempt_at is not None:
            return STAT_CONNECTING  # retries left: a reason such as 15 is not shown yet
        if self.reason == 0:
            return STAT_IDLE
        return self.reason

    def busy(self):
        """A connect is under way, or an aborted one is still being torn down."""
        self.update()
        if self.requested and self.attempt_at is not None and not self.connected:
            return True
        return self.settle_until is not None and time.ticks_diff(self.settle_until, _now()) > 0

    def stop(self):
        self.requested = False
        self.connected = False
        self.attempt_at = None
        self.ap = None
        self.reason = 0


class _SoftAP:
    def __init__(self):
        self.active = False
        mac = bytearray(_base_mac)
        mac[5] = (mac[5] + 1) & 255
        self.mac = bytes(mac)
        self.ssid = "ESP_%02X%02X%02X" % (mac[3], mac[4], mac[5])
        self.password = ""
        self.authmode = AUTH_OPEN
        self.channel = 1
        self.hidden = False
        self.max_clients = 10
        self.static = None


_sta = _Station()
_softap = _SoftAP()


def _field(value, size):
    """What the driver keeps of `value` in a fixed char[size] field: its first `size` bytes (memcpy MIN)."""
    data = value.encode() if isinstance(value, str) else bytes(value)
    return data[:size]


def _sta_config_ssid():
    """The station's config('ssid') as the ESP32 port reads it: a C string from wifi_sta_config_t's 32-byte
    ssid field (mp_obj_new_str_from_cstr, ports/esp32/network_wlan.c, v1.24-v1.26). A 32-byte SSID has no
    terminating zero there, so strlen runs on into the 64-byte password field that follows it: the SSID comes
    back with the passphrase appended."""
    ssid = _field(_sta.ssid, 32)
    if len(ssid) == 32:
        password = _field(_sta.password, 64)
        ssid += password.split(b"\x00", 1)[0]
    try:
        return str(ssid, "utf-8")
    except UnicodeError:
        return ssid.decode("latin-1") if hasattr(ssid, "decode") else str(ssid)


class WLAN:
    def __init__(self, interface_id=STA_IF):
        if interface_id not in (STA_IF, AP_IF):
            raise ValueError("invalid WLAN interface identifier")
        vb_esp32.charge_wifi_init()  # the first construction initialises the driver, for good
        self._if = interface_id
        self._s = _sta if interface_id == STA_IF else _softap

    def __repr__(self):
        return "<WLAN>"

    def _require(self, interface_id):
        if self._if != interface_id:
            raise OSError("STA required" if interface_id == STA_IF else "AP required")

    def active(self, *is_active):
        if is_active:
            on = bool(is_active[0])
            other = _softap if self._s is _sta else _sta
            vb_esp32.charge_wifi_active(on or other.active)  # may raise OSError("WiFi Out of Memory")
            # a change waits in MICROPY_EVENT_POLL_HOOK until the driver follows
            if on != self._s.active and vb_irq.in_handler():
                vb_irq.released_gil("WLAN.active(%s)" % on, _SOURCE)
            if not on and self._if == STA_IF:
                _sta.stop()
            self._s.active = on
        return self._s.active

    def connect(self, ssid=None, key=None, *, bssid=None):
        self._require(STA_IF)
        if not _sta.active:
            raise OSError("Wifi Not Started")
        vb_irq.released_gil("WLAN.connect()", _SOURCE)  # around esp_wifi_connect(), failing or not
        _air.refresh()
        if _air.connect_block_s:
            # the injected fault: a wedged driver. Said on the console, so that a test that restores the air
            # knows this call has read it already (the next boot's call must not)
            print("vb_network: WLAN.connect() wedged for %g s (the air's connect_block_s)" % _air.connect_block_s)
            time.sleep(_air.connect_block_s)
        if _sta.busy():
            raise OSError("Wifi Internal Error")  # esp_wifi_connect(): ESP_ERR_WIFI_CONN
        if ssid is not None or key is not None or bssid is not None:
            _sta.ssid = ssid or ""
            _sta.password = key or ""
            if bssid is not None and len(bssid) != 6:
                raise ValueError()
            _sta.bssid = bytes(bssid) if bssid is not None else None
        _sta.connected = False
        _sta.requested = True
        _sta.reason = 0
        _sta.attempts = 0
        _sta.start_attempt()

    def disconnect(self):
        _sta.update()
        _sta.requested = False
        if _sta.attempt_at is not None and not _sta.connected:
            _sta.settle_until = time.ticks_add(_now(), _SETTLE_MS)
        if _sta.connected or _sta.attempt_at is not None:
            _sta.reason = _REASON_ASSOC_LEAVE
        _sta.connected = False
        _sta.attempt_at = None
        _sta.ap = None

    def isconnected(self):
        if self._if == STA_IF:
            _sta.update()
            return _sta.connected
        return False  # no station ever associates with the simulated SoftAP

    def status(self, param=None):
        if param is None:
            if self._if == STA_IF:
                return _sta.status()
            return None
        if param == "rssi":
            self._require(STA_IF)
            _sta.update()
            if not _sta.connected:
                raise OSError("Wifi Not Connected")
            return _sta.ap["rssi"]
        if param == "stations":
            self._require(AP_IF)
            return []
        raise ValueError("unknown status param")

    def scan(self):
        if not _sta.active:
            raise OSError("STA must be active")
        vb_irq.released_gil("WLAN.scan()", _SOURCE)  # around esp_wifi_scan_start(), started or not
        if _sta.busy():
            return []  # the driver cannot start a scan while it connects
        _air.refresh()
        time.sleep(_air.scan_s)  # the ESP32 port's scan blocks the interpreter until done
        # the last field is always False on the ESP32 port ("XXX hidden?" in network_wlan.c): a
        # hidden network shows only as an empty SSID
        return [(b"" if ap["hidden"] else ap["ssid"].encode(), ap["bssid"], ap["channel"], ap["rssi"],
                 ap["authmode"], False) for ap in _air.aps]

    def ifconfig(self, config=None):
        if config is not None:
            if len(config) != 4:
                raise ValueError("need 4 parameters")
            self._s.static = tuple(config)
            return None
        if self._if == AP_IF:
            if self._s.static:
                return self._s.static
            return (_ap_ip, "255.255.255.0", _ap_ip, "0.0.0.0")
        _sta.update()
        if not _sta.connected:
            return _NO_IP
        return _sta.static or _sta.ap["ifconfig"]

    def ipconfig(self, param):
        ip, netmask, gateway, _ = self.ifconfig()
        if param == "addr4":
            return (ip, netmask)
        if param == "gw4":
            return gateway
        if param == "dhcp4":
            return self._if == STA_IF and not _sta.static
        raise ValueError("unexpected key")

    def config(self, *args, **kwargs):
        if args and kwargs:
            raise TypeError("either pos or kw args are allowed")
        s = self._s
        if kwargs:
            for key, value in kwargs.items():
                if key == "mac":
                    if len(value) != 6:
                        raise ValueError("invalid buffer length")
                    s.mac = bytes(value)
                elif key in ("ssid", "essid"):
                    self._require(AP_IF)
                    s.ssid = value
                elif key in ("password", "key"):
                    self._require(AP_IF)
                    s.password = value
                elif key in ("authmode", "security"):
                    self._require(AP_IF)
                    s.authmode = value
                elif key == "hidden":
                    self._require(AP_IF)
                    s.hidden = bool(value)
                elif key == "max_clients":
                    self._require(AP_IF)
                    s.max_clients = value
                elif key == "channel":
                    s.channel = value
                elif key == "reconnects":
                    self._require(STA_IF)
                    _sta.max_attempts = 0 if value == -1 else value + 1
                elif key in ("hostname", "dhcp_hostname"):
                    hostname(value)
                elif key in ("txpower", "pm", "protocol"):
                    pass
                else:
                    raise ValueError("unknown config param")
            return None
        if len(args) != 1:
            raise TypeError("can query only one param")
        key = args[0]
        if key == "mac":
            return s.mac
        if key in ("ssid", "essid"):
            if self._if == STA_IF:
                return _sta_config_ssid()
            return s.ssid
        if key == "channel":
            _sta.update()
            if _sta.connected:  # one radio: the AP follows the station's channel
                return _sta.channel
            return s.channel
        if key in ("hostname", "dhcp_hostname"):
            return _hostname
        if key == "reconnects":
            self._require(STA_IF)
            return _sta.max_attempts - 1 if _sta.max_attempts else -1
        if self._if == AP_IF:
            if key in ("authmode", "security"):
                return s.authmode
            if key == "hidden":
                return s.hidden
            if key == "max_clients":
                return s.max_clients
        raise ValueError("unknown config param")


def hostname(name=None):
    global _hostname
    if name is None:
        return _hostname
    _hostname = name


def country(code=None):
    return "01" if code is None else None


def phy_mode(mode=None):
    return MODE_11B | MODE_11G | MODE_11N if mode is None else None


__name__ = "network"
