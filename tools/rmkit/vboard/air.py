"""Host-side check of an air file (the simulated Wi-Fi access points), so mistakes show up at start.

The schema is documented in sim/vb_network.py, which reads the same file on the board.
"""

import ipaddress
import json
import re
import secrets
from pathlib import Path

from rmkit.vboard.errors import BoardError

AUTH_MODES = {
    "OPEN": 0, "WEP": 1, "WPA_PSK": 2, "WPA2_PSK": 3, "WPA_WPA2_PSK": 4,
    "WPA2_ENTERPRISE": 5, "WPA3_PSK": 6, "WPA2_WPA3_PSK": 7, "WAPI_PSK": 8, "OWE": 9,
}
AP_KEYS = {"ssid", "password", "authmode", "rssi", "channel", "bssid", "hidden", "join_s",
           "ip", "netmask", "gateway", "dns", "drop_after_s", "fail", "auth_fail_reason"}
FAILS = {None, "assoc", "handshake"}
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


# the simulated network boards join unless told otherwise (`make vboard`, `make sandbox`, the demo)
LAB_SSID = "rmkit-lab"


class AirError(BoardError):
    """The air file is missing or does not describe access points the board can simulate."""


def load_air(path: Path) -> dict:
    """Read and validate an air file; raise AirError naming the file and the bad field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AirError(f"air file {path} does not exist") from None
    except IsADirectoryError:
        raise AirError(f"air file {path} is a directory") from None
    except OSError as exc:
        raise AirError(f"air file {path} cannot be read: {exc.strerror}") from None
    try:
        air = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AirError(f"air file {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    check_air(air, str(path))
    return air


def check_air(air, where: str = "air") -> None:
    def fail(msg):
        raise AirError(f"air file {where}: {msg}")

    if not isinstance(air, dict) or not isinstance(air.get("aps", []), list):
        fail('expected {"aps": [ {"ssid": ..., ...}, ... ]}')
    unknown = set(air) - {"aps", "scan_s", "connect_block_s"}
    if unknown:
        fail(f"unknown top-level key {sorted(unknown)[0]!r} (only 'aps', 'scan_s' and 'connect_block_s')")
    scan_s = air.get("scan_s", 1.5)
    if isinstance(scan_s, bool) or not isinstance(scan_s, (int, float)) or not 0 <= scan_s <= 30:
        fail(f"scan_s must be a number of seconds 0..30 (a scan blocks the board that long), got {scan_s!r}")
    block = air.get("connect_block_s", 0)
    if isinstance(block, bool) or not isinstance(block, (int, float)) or not 0 <= block <= 3600:
        fail(f"connect_block_s must be a number of seconds 0..3600 (WLAN.connect() blocks the board that long: "
             f"a Wi-Fi driver that hangs), got {block!r}")
    for i, ap in enumerate(air.get("aps", [])):
        at = f"aps[{i}]"
        if not isinstance(ap, dict):
            fail(f"{at} must be an object")
        unknown = set(ap) - AP_KEYS
        if unknown:
            fail(f"{at} has unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(AP_KEYS))})")
        ssid = ap.get("ssid")
        if not isinstance(ssid, str) or not 0 < len(ssid.encode()) <= 32:
            fail(f"{at}.ssid must be a string of 1..32 bytes, got {ssid!r}")
        if not isinstance(ap.get("password", ""), str):
            fail(f"{at}.password must be a string")
        auth = ap.get("authmode")
        if auth is not None:
            if isinstance(auth, str):
                if auth.upper().replace("AUTH_", "") not in AUTH_MODES:
                    fail(f"{at}.authmode {auth!r} is not one of {', '.join(AUTH_MODES)}")
            elif not (isinstance(auth, int) and 0 <= auth <= 9):
                fail(f"{at}.authmode must be a name or 0..9, got {auth!r}")
        _int_field(fail, ap, at, "rssi", -127, 0)
        _int_field(fail, ap, at, "channel", 1, 14)
        bssid = ap.get("bssid")
        if bssid is not None and not (isinstance(bssid, str) and _MAC.match(bssid)):
            fail(f"{at}.bssid must look like 02:00:00:00:00:01, got {bssid!r}")
        if not isinstance(ap.get("hidden", False), bool):
            fail(f"{at}.hidden must be true or false")
        for key in ("join_s", "drop_after_s"):
            value = ap.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                fail(f"{at}.{key} must be a number of seconds >= 0, got {value!r}")
        for key in ("ip", "netmask", "gateway", "dns"):
            value = ap.get(key)
            if value is not None:
                try:
                    ipaddress.IPv4Address(value)
                except (ValueError, TypeError):
                    fail(f"{at}.{key} must be an IPv4 address, got {value!r}")
        _int_field(fail, ap, at, "auth_fail_reason", 1, 255)  # ESP-IDF wifi_err_reason_t
        if ap.get("fail") not in FAILS:
            fail(f"{at}.fail must be null, 'assoc' or 'handshake', got {ap.get('fail')!r}")


def _int_field(fail, ap, at, key, low, high):
    value = ap.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
        fail(f"{at}.{key} must be an integer {low}..{high}, got {value!r}")


def lab_air(path: Path) -> tuple[str, str]:
    """The air file at `path`, written with one WPA2 network (LAB_SSID, a random passphrase) if it
    does not exist yet, so a board started without --air can still finish provisioning. Returns the
    (ssid, passphrase) of its first network, for the start-up help."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"aps": [{"ssid": LAB_SSID, "password": secrets.token_hex(8),
                                             "rssi": -48, "channel": 6}]}, indent=1) + "\n")
    aps = load_air(path).get("aps") or [{}]
    return aps[0].get("ssid", ""), aps[0].get("password", "")
