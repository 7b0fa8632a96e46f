"""Protobuf wire codec (proto3) and the schemas of the provisioning messages the node speaks.

A message is a plain dict keyed by field name. `decode()` fills every field: scalars with their
proto3 default, sub-messages and oneof scalars with None, repeated fields with []. `encode()`
writes fields in field-number order and leaves out defaults exactly as Google's protobuf does,
so the bytes match the host side (spec golden-vectors.txt): a scalar equal to its default is
omitted, a sub-message is written whenever it is present (even empty: `{}`), and a oneof scalar
is written whenever it is set (even to 0), because oneof members have explicit presence.

Malformed or truncated input raises DecodeError, and nothing else.
"""

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

# Field kinds
UINT32 = const(0)   # uint32
INT32 = const(1)    # int32 and enums (open enums: any int32 value decodes)
BOOL = const(2)
BYTES = const(3)
STRING = const(4)
MESSAGE = const(5)

# Field flags
REPEATED = const(1)
ONEOF = const(2)

_VARINT = const(0)
_I64 = const(1)
_LEN = const(2)
_SGROUP = const(3)
_EGROUP = const(4)
_I32 = const(5)

_MAX_GROUP_DEPTH = const(32)
_MASK64 = (1 << 64) - 1


class DecodeError(ValueError):
    """The bytes are not a valid encoding of the expected message."""


class Schema:
    """A message type: `fields` is a list of (number, name, kind, sub_schema, flags)."""

    def __init__(self, name, fields):
        self.name = name
        self.fields = sorted(fields, key=lambda f: f[0])
        self.by_number = {}
        for field in self.fields:
            self.by_number[field[0]] = field

    def __repr__(self):
        return "Schema(%s)" % self.name


def F(number, name, kind, sub=None, flags=0):
    return (number, name, kind, sub, flags)


# ---------------------------------------------------------------------------------------------
# decoding

def _read_varint(buf, pos, end):
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise DecodeError("truncated varint at byte %d" % pos)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes at byte %d" % pos)


def _skip(buf, pos, end, wire_type, number):
    """Skip one unknown field's value; returns the position after it."""
    if wire_type == _VARINT:
        return _read_varint(buf, pos, end)[1]
    if wire_type == _I64:
        size = 8
    elif wire_type == _I32:
        size = 4
    elif wire_type == _LEN:
        size, pos = _read_varint(buf, pos, end)
    elif wire_type == _SGROUP:
        return _skip_group(buf, pos, end, number)
    else:
        raise DecodeError("invalid wire type %d for field %d" % (wire_type, number))
    if size > end - pos:
        raise DecodeError("field %d: %d bytes announced, %d left" % (number, size, end - pos))
    return pos + size


def _skip_group(buf, pos, end, number):
    # Iterative, so a hostile nesting depth cannot exhaust the (small) C stack of the node.
    open_groups = [number]
    while open_groups:
        if len(open_groups) > _MAX_GROUP_DEPTH:
            raise DecodeError("groups nested deeper than %d" % _MAX_GROUP_DEPTH)
        key, pos = _read_varint(buf, pos, end)
        inner, wire_type = key >> 3, key & 7
        if inner == 0 or inner > 0x1FFFFFFF:
            raise DecodeError("invalid field number %d" % inner)
        if wire_type == _SGROUP:
            open_groups.append(inner)
        elif wire_type == _EGROUP:
            if open_groups.pop() != inner:
                raise DecodeError("end of group %d does not match its start" % inner)
        else:
            pos = _skip(buf, pos, end, wire_type, inner)
    return pos


def _default(kind, flags):
    if flags & REPEATED:
        return []
    if kind == MESSAGE or flags & ONEOF:
        return None
    if kind == BYTES:
        return b""
    if kind == STRING:
        return ""
    if kind == BOOL:
        return False
    return 0


def _expected_wire_type(kind):
    if kind == BYTES or kind == STRING or kind == MESSAGE:
        return _LEN
    return _VARINT


def _scalar(kind, value):
    if kind == INT32:
        value &= 0xFFFFFFFF  # int32 keeps the low 32 bits of the (sign-extended) varint
        return value - 0x100000000 if value & 0x80000000 else value
    if kind == UINT32:
        return value & 0xFFFFFFFF
    return value != 0  # BOOL


def _decode(schema, buf, pos, end):
    msg = {}
    for number, name, kind, sub, flags in schema.fields:
        msg[name] = _default(kind, flags)
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0 or number > 0x1FFFFFFF:
            raise DecodeError("invalid field number %d in %s" % (number, schema.name))
        field = schema.by_number.get(number)
        if field is None or wire_type != _expected_wire_type(field[2]):
            # Unknown field, or a known number with another wire type: Google's parsers keep
            # such a field as unknown, so we skip it too.
            if wire_type == _EGROUP:
                raise DecodeError("end of group %d without a start" % number)
            pos = _skip(buf, pos, end, wire_type, number)
            continue
        _, name, kind, sub, flags = field
        if wire_type == _VARINT:
            raw, pos = _read_varint(buf, pos, end)
            value = _scalar(kind, raw)
        else:
            size, pos = _read_varint(buf, pos, end)
            if size > end - pos:
                raise DecodeError("%s.%s: %d bytes announced, %d left" % (schema.name, name, size, end - pos))
            if kind == MESSAGE:
                value = _decode(sub, buf, pos, pos + size)
                if not flags & REPEATED and msg[name] is not None:
                    # A sub-message seen twice is merged (protobuf semantics).
                    _merge(sub, msg[name], value)
                    value = msg[name]
            elif kind == BYTES:
                value = bytes(buf[pos:pos + size])
            else:
                try:
                    value = str(bytes(buf[pos:pos + size]), "utf-8")
                except (UnicodeError, ValueError):
                    raise DecodeError("%s.%s is not valid UTF-8" % (schema.name, name))
            pos += size
        if flags & REPEATED:
            msg[name].append(value)
        else:
            msg[name] = value
    return msg


def _merge(schema, into, other):
    for number, name, kind, sub, flags in schema.fields:
        value = other[name]
        if flags & REPEATED:
            into[name].extend(value)
        elif kind == MESSAGE:
            if value is not None:
                if into[name] is None:
                    into[name] = value
                else:
                    _merge(sub, into[name], value)
        elif flags & ONEOF:
            if value is not None:
                into[name] = value
        elif value != _default(kind, flags):
            into[name] = value


def decode(schema, data):
    """Parse `data` (bytes-like) as `schema`; raises DecodeError on malformed input."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("expected bytes, got %s" % type(data).__name__)
    return _decode(schema, data, 0, len(data))


# ---------------------------------------------------------------------------------------------
# encoding

def _varint(out, value):
    value &= _MASK64  # negative int32/enum values go out as 10-byte two's complement, like protobuf
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _encode_into(out, schema, msg):
    for number, name, kind, sub, flags in schema.fields:
        value = msg.get(name)
        if value is None:
            continue
        values = value if flags & REPEATED else (value,)
        for value in values:
            if kind == MESSAGE:
                body = bytearray()
                _encode_into(body, sub, value)
                _varint(out, (number << 3) | _LEN)
                _varint(out, len(body))
                out.extend(body)
            elif kind == BYTES or kind == STRING:
                if kind == STRING:
                    value = value.encode("utf-8")
                if not value and not flags & (ONEOF | REPEATED):
                    continue
                _varint(out, (number << 3) | _LEN)
                _varint(out, len(value))
                out.extend(value)
            else:
                value = int(value)
                if not value and not flags & (ONEOF | REPEATED):
                    continue
                _varint(out, number << 3)
                _varint(out, value)


def encode(schema, msg):
    """Serialize dict `msg` as `schema`; missing keys count as defaults."""
    out = bytearray()
    _encode_into(out, schema, msg)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# schemas (shared/spec/protos.txt)

# constants.proto Status
STATUS_SUCCESS = const(0)
STATUS_INVALID_SEC_SCHEME = const(1)
STATUS_INVALID_PROTO = const(2)
STATUS_TOO_MANY_SESSIONS = const(3)
STATUS_INVALID_ARGUMENT = const(4)
STATUS_INTERNAL_ERROR = const(5)
STATUS_CRYPTO_ERROR = const(6)
STATUS_INVALID_SESSION = const(7)

_EMPTY = []

# session.proto / sec0.proto / sec1.proto
S0SessionCmd = Schema("S0SessionCmd", _EMPTY)
S0SessionResp = Schema("S0SessionResp", [F(1, "status", INT32)])
Sec0Payload = Schema("Sec0Payload", [
    F(1, "msg", INT32),
    F(20, "sc", MESSAGE, S0SessionCmd),
    F(21, "sr", MESSAGE, S0SessionResp),
])
SessionCmd0 = Schema("SessionCmd0", [F(1, "client_pubkey", BYTES)])
SessionResp0 = Schema("SessionResp0", [
    F(1, "status", INT32),
    F(2, "device_pubkey", BYTES),
    F(3, "device_random", BYTES),
])
SessionCmd1 = Schema("SessionCmd1", [F(2, "client_verify_data", BYTES)])
SessionResp1 = Schema("SessionResp1", [
    F(1, "status", INT32),
    F(3, "device_verify_data", BYTES),
])
Sec1Payload = Schema("Sec1Payload", [
    F(1, "msg", INT32),
    F(20, "sc0", MESSAGE, SessionCmd0),
    F(21, "sr0", MESSAGE, SessionResp0),
    F(22, "sc1", MESSAGE, SessionCmd1),
    F(23, "sr1", MESSAGE, SessionResp1),
])
# Sec2 is not implemented on the node; its payload is kept opaque (an unknown-to-us message).
SessionData = Schema("SessionData", [
    F(2, "sec_ver", INT32),
    F(10, "sec0", MESSAGE, Sec0Payload),
    F(11, "sec1", MESSAGE, Sec1Payload),
])

SEC0_SESSION_COMMAND = const(0)
SEC0_SESSION_RESPONSE = const(1)
SEC1_SESSION_COMMAND0 = const(0)
SEC1_SESSION_RESPONSE0 = const(1)
SEC1_SESSION_COMMAND1 = const(2)
SEC1_SESSION_RESPONSE1 = const(3)

# wifi_constants.proto
STA_CONNECTED = const(0)
STA_CONNECTING = const(1)
STA_DISCONNECTED = const(2)
STA_CONNECTION_FAILED = const(3)
FAIL_AUTH_ERROR = const(0)
FAIL_NETWORK_NOT_FOUND = const(1)

WifiConnectedState = Schema("WifiConnectedState", [
    F(1, "ip4_addr", STRING),
    F(2, "auth_mode", INT32),
    F(3, "ssid", BYTES),
    F(4, "bssid", BYTES),
    F(5, "channel", INT32),
])

# wifi_config.proto
CmdGetStatus = Schema("CmdGetStatus", _EMPTY)
RespGetStatus = Schema("RespGetStatus", [
    F(1, "status", INT32),
    F(2, "sta_state", INT32),
    F(10, "fail_reason", INT32, None, ONEOF),
    F(11, "connected", MESSAGE, WifiConnectedState),
])
CmdSetConfig = Schema("CmdSetConfig", [
    F(1, "ssid", BYTES),
    F(2, "passphrase", BYTES),
    F(3, "bssid", BYTES),
    F(4, "channel", INT32),
])
RespSetConfig = Schema("RespSetConfig", [F(1, "status", INT32)])
CmdApplyConfig = Schema("CmdApplyConfig", _EMPTY)
RespApplyConfig = Schema("RespApplyConfig", [F(1, "status", INT32)])
WiFiConfigPayload = Schema("WiFiConfigPayload", [
    F(1, "msg", INT32),
    F(10, "cmd_get_status", MESSAGE, CmdGetStatus),
    F(11, "resp_get_status", MESSAGE, RespGetStatus),
    F(12, "cmd_set_config", MESSAGE, CmdSetConfig),
    F(13, "resp_set_config", MESSAGE, RespSetConfig),
    F(14, "cmd_apply_config", MESSAGE, CmdApplyConfig),
    F(15, "resp_apply_config", MESSAGE, RespApplyConfig),
])
CONFIG_CMD_GET_STATUS = const(0)
CONFIG_RESP_GET_STATUS = const(1)
CONFIG_CMD_SET_CONFIG = const(2)
CONFIG_RESP_SET_CONFIG = const(3)
CONFIG_CMD_APPLY_CONFIG = const(4)
CONFIG_RESP_APPLY_CONFIG = const(5)

# wifi_scan.proto
CmdScanStart = Schema("CmdScanStart", [
    F(1, "blocking", BOOL),
    F(2, "passive", BOOL),
    F(3, "group_channels", UINT32),
    F(4, "period_ms", UINT32),
])
RespScanStart = Schema("RespScanStart", _EMPTY)
CmdScanStatus = Schema("CmdScanStatus", _EMPTY)
RespScanStatus = Schema("RespScanStatus", [
    F(1, "scan_finished", BOOL),
    F(2, "result_count", UINT32),
])
CmdScanResult = Schema("CmdScanResult", [
    F(1, "start_index", UINT32),
    F(2, "count", UINT32),
])
WiFiScanResult = Schema("WiFiScanResult", [
    F(1, "ssid", BYTES),
    F(2, "channel", UINT32),
    F(3, "rssi", INT32),
    F(4, "bssid", BYTES),
    F(5, "auth", INT32),
])
RespScanResult = Schema("RespScanResult", [F(1, "entries", MESSAGE, WiFiScanResult, REPEATED)])
WiFiScanPayload = Schema("WiFiScanPayload", [
    F(1, "msg", INT32),
    F(2, "status", INT32),
    F(10, "cmd_scan_start", MESSAGE, CmdScanStart),
    F(11, "resp_scan_start", MESSAGE, RespScanStart),
    F(12, "cmd_scan_status", MESSAGE, CmdScanStatus),
    F(13, "resp_scan_status", MESSAGE, RespScanStatus),
    F(14, "cmd_scan_result", MESSAGE, CmdScanResult),
    F(15, "resp_scan_result", MESSAGE, RespScanResult),
])
SCAN_CMD_START = const(0)
SCAN_RESP_START = const(1)
SCAN_CMD_STATUS = const(2)
SCAN_RESP_STATUS = const(3)
SCAN_CMD_RESULT = const(4)
SCAN_RESP_RESULT = const(5)

# wifi_ctrl.proto
_Empty = Schema("Empty", _EMPTY)
WiFiCtrlPayload = Schema("WiFiCtrlPayload", [
    F(1, "msg", INT32),
    F(2, "status", INT32),
    F(11, "cmd_ctrl_reset", MESSAGE, _Empty),
    F(12, "resp_ctrl_reset", MESSAGE, _Empty),
    F(13, "cmd_ctrl_reprov", MESSAGE, _Empty),
    F(14, "resp_ctrl_reprov", MESSAGE, _Empty),
])
CTRL_RESERVED = const(0)
CTRL_CMD_RESET = const(1)
CTRL_RESP_RESET = const(2)
CTRL_CMD_REPROV = const(3)
CTRL_RESP_REPROV = const(4)

# esp_rmaker_user_mapping.proto (package rainmaker). The older cloud.CloudConfigPayload
# (cmd_get_set_details / resp_get_set_details{Status, DeviceSecret}) is wire-identical (spec 4.1),
# so this one schema serves both variants.
CmdSetUserMapping = Schema("CmdSetUserMapping", [
    F(1, "UserID", STRING),
    F(2, "SecretKey", STRING),
])
RespSetUserMapping = Schema("RespSetUserMapping", [
    F(1, "Status", INT32),
    F(2, "NodeId", STRING),
])
RMakerConfigPayload = Schema("RMakerConfigPayload", [
    F(1, "msg", INT32),
    F(10, "cmd_set_user_mapping", MESSAGE, CmdSetUserMapping),
    F(11, "resp_set_user_mapping", MESSAGE, RespSetUserMapping),
])
MAPPING_CMD_SET_USER_MAPPING = const(0)
MAPPING_RESP_SET_USER_MAPPING = const(1)
MAPPING_SUCCESS = const(0)
MAPPING_INVALID_PARAM = const(1)
MAPPING_INVALID_STATE = const(2)

# esp_rmaker_chal_resp.proto: not served by this node (we never advertise ch_resp, spec 2.2), but
# kept so the codec covers every golden vector.
CmdCRPayload = Schema("CmdCRPayload", [F(1, "payload", BYTES)])
RespCRPayload = Schema("RespCRPayload", [F(1, "payload", BYTES), F(2, "node_id", STRING)])
RespGetNodeIDPayload = Schema("RespGetNodeIDPayload", [F(1, "node_id", STRING)])
RMakerChRespPayload = Schema("RMakerChRespPayload", [
    F(1, "msg", INT32),
    F(2, "status", INT32),
    F(10, "cmdChallengeResponsePayload", MESSAGE, CmdCRPayload),
    F(11, "respChallengeResponsePayload", MESSAGE, RespCRPayload),
    F(12, "cmdGetNodeIDPayload", MESSAGE, _Empty),
    F(13, "respGetNodeIDPayload", MESSAGE, RespGetNodeIDPayload),
    F(14, "cmdDisableChalRespPayload", MESSAGE, _Empty),
    F(15, "respDisableChalRespPayload", MESSAGE, _Empty),
])
