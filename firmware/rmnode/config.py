"""Factory data, board settings and the node's identity (node id, service name, PoP, security).

Reads `<root>/factory/factory.json` and `<root>/settings.json` (root "/" on a board, a temp dir in
tests). A missing or bad file or value costs one log line and falls back to the default; it
never stops the node.
"""

import json

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import log

_TAG = const("config")

# const()s: inlined by the compiler, no heap on the always-loaded path
_DEFAULT_PROV_PORT = const(80)
_DEFAULT_PROV_LINGER_S = const(30)  # the longest wait for a client to read "Connected"
# MQTT (docs/protocol.md 5.1): defined here only; rmnode.mqtt takes every value from its caller
_DEFAULT_MQTT_PORT = const(8883)
_DEFAULT_MQTT_KEEPALIVE_S = const(120)
_DEFAULT_MQTT_CONNECT_TIMEOUT_MS = const(20000)
_DEFAULT_MQTT_BACKOFF_FIRST_MS = const(1000)
_DEFAULT_MQTT_BACKOFF_CAP_MS = const(60000)
_DEFAULT_SNTP_HOST = const("pool.ntp.org")
_DEFAULT_BLE_IDLE_S = const(60)


def valid_node_id(node_id):
    """A node id goes into MQTT topics: non-empty, printable, no '/', '+', '#'."""
    if not isinstance(node_id, str) or not 0 < len(node_id) <= 64:
        return False
    for ch in node_id:
        if ch in "/+#" or ord(ch) <= 0x20 or ord(ch) >= 0x7F:
            return False
    return True


def _read_json(path):
    """The object in a JSON file, or None (with one log line) when missing or bad."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        log.info(_TAG, "%s not found, using defaults" % path)
        return None
    try:
        data = json.loads(text)
    except ValueError:
        log.warning(_TAG, "%s is not valid JSON (%d bytes), using defaults" % (path, len(text)))
        return None
    if not isinstance(data, dict):
        log.warning(_TAG, "%s does not hold a JSON object, using defaults" % path)
        return None
    return data


class NodeConfig:
    """Everything the node needs to know about itself. `mac` is the 6-byte base MAC."""

    # One __init__ with module-level helpers rather than a method per field: every function costs
    # heap for as long as the node runs, and this module stays loaded in every phase.
    def __init__(self, mac, root="/"):
        if len(mac) != 6:
            raise ValueError("base MAC must be 6 bytes, got %d" % len(mac))
        self.root = root
        self.mac = mac = bytes(mac)
        factory = _read_json(self.path("/factory/factory.json")) or {}
        self.settings = st = _read_json(self.path("/settings.json")) or {}

        self.cert_path = _factory_str(factory, "cert", None, self)
        self.key_path = _factory_str(factory, "key", None, self)
        self.ca_path = _factory_str(factory, "ca", None, self)
        self.mqtt_host = _factory_str(factory, "mqtt_host", None)
        self.mqtt_port = _int(factory, "mqtt_port", _DEFAULT_MQTT_PORT, 1, 65535, "factory")
        self.topic_prefix = _factory_str(factory, "topic_prefix", "")
        # SNTP server (rmnode.clock): settings override factory data; a public pool by default
        self.sntp_host = _str(st, "sntp_host", _factory_str(factory, "sntp_host", None) or _DEFAULT_SNTP_HOST)
        self.sntp_port = _int(st, "sntp_port", _int(factory, "sntp_port", 123, 1, 65535, "factory"), 1, 65535,
                              "settings")

        value = factory.get("sec_ver", 1)
        if not isinstance(value, int) or isinstance(value, bool) or value not in (0, 1):
            # Security 2 (SRP6a 3072-bit) is too slow in pure MicroPython (docs/protocol.md 3.4): not offered.
            log.warning(_TAG, "factory sec_ver=%r not supported, using Security 1" % (value,))
            value = 1
        self.sec_ver = value

        pop = factory.get("pop")
        if pop is not None and not isinstance(pop, str):
            log.warning(_TAG, "factory pop is not a string, using the MAC-derived PoP")
            pop = None
        # docs/protocol.md 7.4 "MAC" PoP type: hex of MAC[2..5]; printed nowhere, derivable by the owner.
        # "" means Security 1 without PoP ("no_pop", docs/protocol.md 2.2).
        self.pop = "".join("%02x" % b for b in mac[2:]) if pop is None else pop

        self.prov_port = _int(st, "prov_port", _DEFAULT_PROV_PORT, 1, 65535, "settings")
        # docs/protocol.md 1: which provisioning transports serve (softap, ble, both); settings override factory
        value = _str(st, "transport", _factory_str(factory, "transport", "softap") or "softap")
        if value not in ("softap", "ble", "both"):
            log.warning(_TAG, "transport %r is not softap, ble or both, using softap" % (value,))
            value = "softap"
        self.transport = value
        # docs/protocol.md 7.1: how a user is mapped, settings over factory data; checked by rmnode.prov_phase, which
        # alone uses it (the online phase's heap has no room to spare for the check)
        self.user_mapping = st.get("user_mapping", factory.get("user_mapping"))
        # None: rmnode.ble's default; checked by rmnode.prov_phase, which alone uses it (the checker loads only there)
        self.ble_service_uuid = st.get("ble_service_uuid") or _factory_str(factory, "ble_service_uuid", None)
        self.ble_idle_s = _int(st, "ble_idle_s", _DEFAULT_BLE_IDLE_S, 1, 3600, "settings")
        self.prov_linger_s = _int(st, "prov_linger_s", _DEFAULT_PROV_LINGER_S, 0, 3600, "settings")
        # MQTT settings (online.build): checked here so a bad value costs one log line, not a boot loop
        self.mqtt_keepalive_s = _int(st, "mqtt_keepalive_s", _DEFAULT_MQTT_KEEPALIVE_S, 10, 65535, "settings")
        self.mqtt_connect_timeout_ms = _int(st, "mqtt_connect_timeout_ms", _DEFAULT_MQTT_CONNECT_TIMEOUT_MS, 1000,
                                            600000, "settings")
        backoff = st.get("mqtt_backoff_ms", None)
        if backoff is not None and not (isinstance(backoff, list) and len(backoff) == 2
                                        and all(isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 3600000
                                                for v in backoff) and backoff[0] <= backoff[1]):
            log.warning(_TAG, "settings mqtt_backoff_ms must be [first, cap] in ms, using [%d, %d]"
                        % (_DEFAULT_MQTT_BACKOFF_FIRST_MS, _DEFAULT_MQTT_BACKOFF_CAP_MS))
            backoff = None
        self.mqtt_backoff_ms = tuple(backoff) if backoff else (_DEFAULT_MQTT_BACKOFF_FIRST_MS,
                                                                _DEFAULT_MQTT_BACKOFF_CAP_MS)
        self.node_name = _str(st, "node_name", "rmnode")
        self.node_type = _str(st, "node_type", "Other")
        self.node_id, self.node_id_source = _node_id(factory.get("node_id"), self.cert_path, mac)
        # docs/protocol.md 7.4: PROV_ + last three MAC bytes, lower-case hex
        self.service_name = "PROV_" + "".join("%02x" % b for b in mac[3:])

    def path(self, board_path):
        """Host path of a path on the board's flash."""
        root = self.root
        if root in ("", "/"):
            return board_path if board_path.startswith("/") else "/" + board_path
        return root.rstrip("/") + "/" + board_path.lstrip("/")


def _factory_str(factory, key, default, paths=None):
    """A string from the factory data; a path on the flash when `paths` (the NodeConfig) is given."""
    value = factory.get(key, default)
    if value is not default and not isinstance(value, str):
        log.warning(_TAG, "factory %s is not a string, ignoring it" % key)
        return default
    if paths is not None:
        return paths.path(value) if value else None
    return value


def _node_id(node_id, cert_path, mac):
    if node_id is not None:
        if valid_node_id(node_id):
            return node_id, "factory"
        log.warning(_TAG, "factory node_id %r is not usable in MQTT topics, ignoring it" % (node_id,))
    if cert_path:
        # the DER parser is loaded only here: a board with a factory node id never pays for it
        from rmnode.cert import CertError, subject_cn

        try:
            with open(cert_path, "rb") as f:
                der = f.read()
            node_id = subject_cn(der)
            if valid_node_id(node_id):
                return node_id, "cert"
            log.warning(_TAG, "certificate CN %r is not usable as node id" % (node_id,))
        except OSError:
            log.warning(_TAG, "node certificate %s not readable" % cert_path)
        except CertError as e:
            log.warning(_TAG, "node certificate %s: %s" % (cert_path, e))
    # docs/protocol.md 7.3: base MAC, 12 upper-case hex digits
    return "".join("%02X" % b for b in mac), "mac"


def _int(source, key, default, low, high, where):
    value = source.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        log.warning(_TAG, "%s %s=%r is not an integer in %d..%d, using %d" % (where, key, value, low, high, default))
        return default
    return value


def _str(source, key, default):
    value = source.get(key, default)
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        log.warning(_TAG, "settings %s must be a string of 1..64 characters, using %r" % (key, default))
        return default
    return value
