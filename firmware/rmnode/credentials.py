"""Wi-Fi credentials on flash.

SSIDs and passphrases are bytes (an SSID need not be UTF-8). On flash they are JSON values: the text
when it is UTF-8, so state.json stays readable, else {"hex": ...}. A log line shows an SSID with
rmnode.log.shown.
"""

from rmnode import log

WIFI_KEY = "wifi"  # {"ssid": ..., "passphrase": ...} in the state store, as ESP-IDF keeps them in NVS


def to_flash(value):
    """bytes -> a JSON value: the text when it is UTF-8, else hex with a marker."""
    try:
        return bytes(value).decode()
    except UnicodeError:
        from binascii import hexlify  # built in: importing it costs nothing, a global here would

        return {"hex": hexlify(bytes(value)).decode()}


def from_flash(value):
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and isinstance(value.get("hex"), str):
        from binascii import unhexlify

        return unhexlify(value["hex"])
    raise ValueError("not a stored byte string")


def save(store, ssid, passphrase):
    store.set(WIFI_KEY, {"ssid": to_flash(ssid), "passphrase": to_flash(passphrase)})


def load(store):
    """(ssid, passphrase) as bytes from flash, or None (none stored, or malformed: provision again)."""
    wifi = store.get(WIFI_KEY)
    if wifi is None:
        return None
    try:
        ssid, passphrase = from_flash(wifi["ssid"]), from_flash(wifi["passphrase"])
        if ssid:
            return ssid, passphrase
    except (KeyError, TypeError, ValueError):
        pass
    log.warning("node", "stored Wi-Fi credentials are malformed, provisioning again")
    return None
