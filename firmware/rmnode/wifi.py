"""The only module that touches `network.WLAN` (ESP32 API): station join, status, scan, SoftAP.

The `network` module is passed in (default: the board's), so the same code drives an ESP32, the
virtual board's simulated air, and unit-test fakes.
"""

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import log

_TAG = const("wifi")

# ESP32 port status codes, used when the network module lacks the constant
_STAT_IDLE = const(1000)
_STAT_CONNECTING = const(1001)
_STAT_GOT_IP = const(1010)
_AUTH_OPEN = const(0)
_AUTH_WPA2_PSK = const(3)
# ESP-IDF disconnect reasons that mean "wrong passphrase" in practice: AUTH_EXPIRE (2),
# ASSOC_EXPIRE (4), MIC_FAILURE (14), 4WAY_HANDSHAKE_TIMEOUT (15, the usual one on an ESP32),
# AUTH_FAIL (202), HANDSHAKE_TIMEOUT (204), CONNECTION_FAIL (205). A string: no heap per lookup.
_AUTH_REASONS = b"\x02\x04\x0e\x0f\xca\xcc\xcd"

# wifi_constants.proto WifiStationState: what StationStatus.state holds. The one definition: prov and
# online_phase compare with these (public, so each costs a global here; inlined in this module). Here,
# not in rmnode.pb, so the always-loaded station code does not pull in the codec.
STA_CONNECTED = const(0)
STA_CONNECTING = const(1)
STA_DISCONNECTED = const(2)
STA_CONNECTION_FAILED = const(3)
# WifiConnectFailedReason
_FAIL_AUTH_ERROR = const(0)
FAIL_NETWORK_NOT_FOUND = const(1)


def _driver_arg(value):
    """What WLAN.connect gets: str when UTF-8 (the usual form; the simulated air compares text), else
    the bytes themselves (the ESP32 port takes both). Not for log lines: those use log.shown."""
    try:
        return str(value, "utf-8")
    except (UnicodeError, ValueError):
        return value


class StationStatus:
    """Station state as provisioning reports it (wifi_constants.proto values)."""

    def __init__(self, state, fail_reason=None, ip4_addr="", ssid=b"", bssid=b"", channel=0, auth_mode=0):
        self.state = state
        self.fail_reason = fail_reason
        self.ip4_addr = ip4_addr
        self.ssid = ssid
        self.bssid = bssid
        self.channel = channel
        self.auth_mode = auth_mode


class Wifi:
    """`join_retries`: reconnect attempts while joining, so a failure other than a wrong password
    or a missing AP (which the ESP32 reports at once) still ends the join; once connected the
    station retries forever, as ESP32 does by default."""

    def __init__(self, network=None, join_retries=2):
        if network is None:
            import network
        self._net = network
        self._join_retries = join_retries
        self._retry_forever = True
        self._sta = network.WLAN(network.STA_IF)
        self._ap = None
        self._joining = False  # a join was requested and not given up
        self._ssid = b""
        self._bssid = b""
        self._known = {}  # ssid -> (bssid, channel, auth) from the last scan
        self._passphrase = b""
        self._start_pending = False  # the driver refused connect() (busy): try again when asked
        self._failure_logged = None  # the failure reason already logged for this join

    # -- station -------------------------------------------------------------------------------
    def mac(self):
        """Base MAC (the station MAC on an ESP32), 6 bytes."""
        self._sta.active(True)
        return bytes(self._sta.config("mac"))

    def connect(self, ssid, passphrase, bssid=None):
        """Start joining; returns at once, `status()` tells how it goes. ssid/passphrase are bytes."""
        self._sta.active(True)
        try:
            self._sta.disconnect()
        except OSError:
            pass
        self._ssid = bytes(ssid)
        self._passphrase = bytes(passphrase)
        self._bssid = bytes(bssid) if bssid else b""
        self._joining = True
        self._failure_logged = None
        self._set_reconnects(self._join_retries)
        log.info(_TAG, "joining %s" % log.shown(self._ssid))  # never the passphrase
        self._start()

    def _start(self):
        """WLAN.connect(), unless the driver is still busy with an earlier connect: the ESP32 port then
        raises OSError("Wifi Internal Error"), so try again on the next status() or is_connected()."""
        # str where possible: the usual form for WLAN.connect (the ESP32 port takes bytes too)
        ssid, passphrase = _driver_arg(self._ssid), _driver_arg(self._passphrase)
        try:
            if self._bssid:
                self._sta.connect(ssid, passphrase, bssid=self._bssid)
            else:
                self._sta.connect(ssid, passphrase)
            self._start_pending = False
        except OSError as exc:
            if not self._start_pending:
                log.info(_TAG, "driver busy (%s); connecting again shortly" % exc)
            self._start_pending = True

    def _set_reconnects(self, count):
        try:
            self._sta.config(reconnects=count)
            self._retry_forever = count < 0
        except (ValueError, TypeError, OSError):
            pass  # a port without the setting: its default applies

    def disconnect(self):
        self._joining = False
        self._start_pending = False
        try:
            self._sta.disconnect()
        except OSError:
            pass

    def is_connected(self):
        if self._start_pending:
            self._start()
        return self._sta.isconnected()

    def status(self):
        """A StationStatus from the station's real state. Never starts a join (is_connected() retries one the
        driver refused): a BLE IRQ handler asks this, and WLAN.connect() must not run there (rmnode.prov_endpoints)."""
        net = self._net
        if self._start_pending:
            return StationStatus(STA_CONNECTING if self._joining else STA_DISCONNECTED)
        code = self._sta.status()
        connecting = getattr(net, "STAT_CONNECTING", _STAT_CONNECTING)
        if code == getattr(net, "STAT_GOT_IP", _STAT_GOT_IP) or (code != connecting and self._sta.isconnected()):
            return self._connected_status()
        if not self._joining:
            return StationStatus(STA_DISCONNECTED)
        if code == connecting or code == getattr(net, "STAT_IDLE", _STAT_IDLE):
            # IDLE right after connect(): the driver has not started yet
            return StationStatus(STA_CONNECTING)
        auth = 0 < code < 256 and code in _AUTH_REASONS
        if self._failure_logged != code:
            self._failure_logged = code
            log.warning(_TAG, "joining %s failed: reason %d (%s)"
                        % (log.shown(self._ssid), code, "authentication" if auth else "network not found"))
        # NO_AP_FOUND, BEACON_TIMEOUT, ASSOC_FAIL, anything else: network not found, as ESP-IDF's
        # provisioning manager reports them
        return StationStatus(STA_CONNECTION_FAILED, _FAIL_AUTH_ERROR if auth else FAIL_NETWORK_NOT_FOUND)

    def _config(self, key, default):
        try:
            return self._sta.config(key)
        except (ValueError, OSError, TypeError):
            return default

    def _connected_status(self):
        if not self._retry_forever:
            self._set_reconnects(-1)
        ip4_addr = self._sta.ifconfig()[0]
        # The SSID we were given, never the driver's: the ESP32 port reads the station's 32-byte SSID field
        # with strlen, so a 32-character SSID comes back with the passphrase appended (ports/esp32/network_wlan.c
        # `config('ssid')`, v1.24-v1.26), and that would go out in the status reply.
        ssid = self._ssid
        # The ESP32 port cannot report the joined AP's BSSID or auth mode: take them from the last
        # scan if it saw the SSID. No scan here: it would block the event loop for 1.5-3 s and take
        # the radio off the access point's channel while the provisioning client waits.
        known = self._known.get(ssid)
        bssid = self._config("bssid", None) or self._bssid or (known[0] if known else b"")
        channel = self._config("channel", None)
        if not channel and known:
            channel = known[1]
        auth_mode = self._config("security", None)
        if auth_mode is None:
            auth_mode = known[2] if known else (_AUTH_WPA2_PSK if self._passphrase else _AUTH_OPEN)
        return StationStatus(STA_CONNECTED, None, ip4_addr, ssid, bytes(bssid), channel or 0, auth_mode)

    def scan(self):
        """Visible access points as dicts (WiFiScanResult field names), strongest first."""
        self._sta.active(True)
        results = []
        for entry in self._sta.scan():
            # ESP32: (ssid, bssid, channel, RSSI, security, hidden); security uses the
            # ESP-IDF wifi_auth_mode_t numbering, the same as WifiAuthMode (docs/protocol.md 2.4).
            # Hidden networks come with an empty SSID: nothing a client could join by name.
            ssid, bssid, channel, rssi, auth = bytes(entry[0]), bytes(entry[1]), entry[2], entry[3], entry[4]
            if not ssid:
                continue
            results.append({"ssid": ssid, "bssid": bssid, "channel": channel, "rssi": rssi, "auth": auth})
        results.sort(key=lambda r: -r["rssi"])
        known = {}
        for r in reversed(results):
            known[r["ssid"]] = (r["bssid"], r["channel"], r["auth"])
        self._known = known
        return results

    # -- SoftAP --------------------------------------------------------------------------------
    def ap_up(self, essid):
        """Open access point named `essid` (docs/protocol.md 1.1: open unless a service key is given)."""
        if self._ap is None:
            self._ap = self._net.WLAN(self._net.AP_IF)
        self._ap.active(True)
        authmode = getattr(self._net, "AUTH_OPEN", _AUTH_OPEN)
        try:
            self._ap.config(essid=essid, authmode=authmode, max_clients=5)
        except (ValueError, TypeError):
            self._ap.config(essid=essid, authmode=authmode)
        log.info(_TAG, "access point %s up" % essid)

    def ap_down(self):
        if self._ap is not None and self._ap.active():
            self._ap.active(False)
            log.info(_TAG, "access point down")

    def ap_active(self):
        return self._ap is not None and bool(self._ap.active())

    def ap_ip(self):
        return self._ap.ifconfig()[0] if self._ap is not None else None
