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

_TAG = "config"

# const()s: inlined by the compiler, no heap on the always-loaded path
_DEFAULT_PROV_PORT = const(80)
_DEFAULT_PROV_LINGER_S = const(30)  # the longest wait for a client to read "Connected"
_DEFAULT_MQTT_PORT = const(8883)

_CN_OID = b"\x55\x04\x03"  # 2.5.4.3 commonName
_STRING_TAGS = (0x0C, 0x13, 0x16, 0x14)  # UTF8String, PrintableString, IA5String, T61String


class CertError(ValueError):
    """The node certificate is not DER we can read a subject CN from."""


def _der_item(der, pos, end):
    """Returns (tag, content_start, content_end) of the DER item at `pos`."""
    if pos + 2 > end:
        raise CertError("truncated DER at byte %d" % pos)
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise CertError("bad DER length at byte %d" % pos)
        length = int.from_bytes(bytes(der[pos:pos + count]), "big")
        pos += count
    if pos + length > end:
        raise CertError("DER item at byte %d overruns its container" % pos)
    return tag, pos, pos + length


def _children(der, start, end):
    pos = start
    while pos < end:
        item = _der_item(der, pos, end)
        yield item
        pos = item[2]


def subject_cn(der):
    """The subject commonName of an X.509 certificate in DER."""
    tag, start, end = _der_item(der, 0, len(der))
    if tag != 0x30:
        raise CertError("certificate is not a DER SEQUENCE")
    tag, start, end = _der_item(der, start, end)  # tbsCertificate
    if tag != 0x30:
        raise CertError("tbsCertificate is not a SEQUENCE")
    fields = [item for item in _children(der, start, end)]
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject
    if len(fields) < 5 or fields[4][0] != 0x30:
        raise CertError("no subject in tbsCertificate")
    _, start, end = fields[4]
    for rdn_tag, rdn_start, rdn_end in _children(der, start, end):
        if rdn_tag != 0x31:
            raise CertError("subject RDN is not a SET")
        for atv_tag, atv_start, atv_end in _children(der, rdn_start, rdn_end):
            parts = [item for item in _children(der, atv_start, atv_end)]
            if atv_tag != 0x30 or len(parts) != 2 or parts[0][0] != 0x06:
                raise CertError("malformed subject attribute")
            if bytes(der[parts[0][1]:parts[0][2]]) != _CN_OID:
                continue
            value_tag, value_start, value_end = parts[1]
            if value_tag not in _STRING_TAGS:
                raise CertError("subject CN has unsupported string type 0x%02x" % value_tag)
            try:
                return str(bytes(der[value_start:value_end]), "utf-8")
            except (UnicodeError, ValueError):
                raise CertError("subject CN is not valid UTF-8")
    raise CertError("certificate subject has no CN")


def valid_node_id(node_id):
    """A node id goes into MQTT topics: non-empty, printable, no '/', '+', '#'."""
    if not isinstance(node_id, str) or not 0 < len(node_id) <= 64:
        return False
    for ch in node_id:
        if ch in "/+#" or ord(ch) <= 0x20 or ord(ch) >= 0x7F:
            return False
    return True


def _join(root, path):
    if root in ("", "/"):
        return path if path.startswith("/") else "/" + path
    return root.rstrip("/") + "/" + path.lstrip("/")


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

    def __init__(self, mac, root="/"):
        if len(mac) != 6:
            raise ValueError("base MAC must be 6 bytes, got %d" % len(mac))
        self.root = root
        self.mac = bytes(mac)
        self.factory = _read_json(self.path("/factory/factory.json")) or {}
        self.settings = _read_json(self.path("/settings.json")) or {}

        self.cert_path = self._factory_path("cert")
        self.key_path = self._factory_path("key")
        self.ca_path = self._factory_path("ca")
        self.mqtt_host = self._factory_str("mqtt_host", None)
        self.mqtt_port = self._int(self.factory, "mqtt_port", _DEFAULT_MQTT_PORT, 1, 65535, "factory")
        self.topic_prefix = self._factory_str("topic_prefix", "")
        self.sec_ver = self._sec_ver()
        self.pop = self._pop()
        self.prov_port = self._int(self.settings, "prov_port", _DEFAULT_PROV_PORT, 1, 65535, "settings")
        self.prov_linger_s = self._int(self.settings, "prov_linger_s", _DEFAULT_PROV_LINGER_S, 0, 3600, "settings")
        # MQTT settings (online.build): checked here so a bad value costs one log line, not a boot loop
        st = self.settings
        self.mqtt_keepalive_s = self._int(st, "mqtt_keepalive_s", 120, 10, 65535, "settings")
        self.mqtt_connect_timeout_ms = self._int(st, "mqtt_connect_timeout_ms", 20000, 1000, 600000, "settings")
        backoff = st.get("mqtt_backoff_ms", None)
        if backoff is not None and not (isinstance(backoff, list) and len(backoff) == 2
                                        and all(isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 3600000
                                                for v in backoff) and backoff[0] <= backoff[1]):
            log.warning(_TAG, "settings mqtt_backoff_ms must be [first, cap] in ms, using [1000, 60000]")
            backoff = None
        self.mqtt_backoff_ms = tuple(backoff) if backoff else (1000, 60000)
        self.node_name = self._str(st, "node_name", "rmnode")
        self.node_type = self._str(st, "node_type", "Other")
        self.node_id, self.node_id_source = self._node_id()
        # spec 7.4: PROV_ + last three MAC bytes, lower-case hex
        self.service_name = "PROV_" + "".join("%02x" % b for b in self.mac[3:])

    def path(self, board_path):
        """Host path of a path on the board's flash."""
        return _join(self.root, board_path)

    def mac_hex(self):
        return "".join("%02X" % b for b in self.mac)

    # -- helpers -------------------------------------------------------------------------------
    def _factory_str(self, key, default):
        value = self.factory.get(key, default)
        if value is not default and not isinstance(value, str):
            log.warning(_TAG, "factory %s is not a string, ignoring it" % key)
            return default
        return value

    def _factory_path(self, key):
        value = self._factory_str(key, None)
        return self.path(value) if value else None

    def _int(self, source, key, default, low, high, where):
        value = source.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            log.warning(_TAG, "%s %s=%r is not an integer in %d..%d, using %d" % (where, key, value, low, high, default))
            return default
        return value

    def _str(self, source, key, default):
        value = source.get(key, default)
        if not isinstance(value, str) or not 0 < len(value) <= 64:
            log.warning(_TAG, "settings %s must be a string of 1..64 characters, using %r" % (key, default))
            return default
        return value

    def _sec_ver(self):
        value = self.factory.get("sec_ver", 1)
        if not isinstance(value, int) or isinstance(value, bool) or value not in (0, 1):
            # Security 2 (SRP6a 3072-bit) is too slow in pure MicroPython (notes 3): not offered.
            log.warning(_TAG, "factory sec_ver=%r not supported, using Security 1" % (value,))
            return 1
        return value

    def _pop(self):
        pop = self.factory.get("pop")
        if pop is None:
            # spec 7.4 "MAC" PoP type: hex of MAC[2..5]; printed nowhere, derivable by the owner
            return "".join("%02x" % b for b in self.mac[2:])
        if not isinstance(pop, str):
            log.warning(_TAG, "factory pop is not a string, using the MAC-derived PoP")
            return "".join("%02x" % b for b in self.mac[2:])
        return pop  # "" means Security 1 without PoP ("no_pop", spec 2.2)

    def _node_id(self):
        node_id = self.factory.get("node_id")
        if node_id is not None:
            if valid_node_id(node_id):
                return node_id, "factory"
            log.warning(_TAG, "factory node_id %r is not usable in MQTT topics, ignoring it" % (node_id,))
        if self.cert_path:
            try:
                with open(self.cert_path, "rb") as f:
                    der = f.read()
                node_id = subject_cn(der)
                if valid_node_id(node_id):
                    return node_id, "cert"
                log.warning(_TAG, "certificate CN %r is not usable as node id" % (node_id,))
            except OSError:
                log.warning(_TAG, "node certificate %s not readable" % self.cert_path)
            except CertError as e:
                log.warning(_TAG, "node certificate %s: %s" % (self.cert_path, e))
        # spec 7.3: base MAC, 12 upper-case hex digits
        return self.mac_hex(), "mac"
