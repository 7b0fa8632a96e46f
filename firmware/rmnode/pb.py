"""Protobuf wire codec (proto3) and the schemas of the provisioning messages the node speaks.

A message is a plain dict keyed by field name. `decode()` fills every field: scalars with their
proto3 default, sub-messages and oneof scalars with None, repeated fields with []. `encode()`
writes fields in field-number order and leaves out defaults exactly as Google's protobuf does,
so the bytes match the host side (the golden vectors of docs/protocol.md 3.5): a scalar equal to
its default is omitted, a sub-message is written whenever it is present (even empty: `{}`), and a oneof scalar
is written whenever it is set (even to 0), because oneof members have explicit presence.

A schema is a string, not an object: on a board without PSRAM the tables must cost no more than
their text (a string constant is one interned string; tuples and objects built at import cost
about ten times more heap). Each field is `NUMBER:NAME:TYPE`, fields in number order, separated
by spaces; TYPE is one letter for a scalar (i int32/enum, u uint32, b bool, y bytes, s string) or
the name of another schema in this module (a sub-message); a `*` suffix marks a repeated field,
a `?` suffix a oneof scalar. `fields(schema)` parses one into tuples, per call.

Malformed or truncated input raises DecodeError, and nothing else.
"""

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

_VARINT = const(0)
_I64 = const(1)
_LEN = const(2)
_SGROUP = const(3)
_EGROUP = const(4)
_I32 = const(5)

_MAX_GROUP_DEPTH = const(32)
_MASK64 = const(0xFFFFFFFFFFFFFFFF)


class DecodeError(ValueError):
    """The bytes are not a valid encoding of the expected message."""


def fields(schema):
    """[(number, name, kind, sub, flag)]: kind one of "iubys" or "m" (message, `sub` its schema),
    flag "" or "*" (repeated) or "?" (oneof scalar)."""
    out = []
    for field in schema.split():
        number, name, kind = field.split(":")
        flag = kind[-1]
        if flag == "*" or flag == "?":
            kind = kind[:-1]
        else:
            flag = ""
        sub = None
        if len(kind) > 1:
            sub = globals()[kind]
            kind = "m"
        out.append((int(number), name, kind, sub, flag))
    return out


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


def _default(kind, flag):
    if flag == "*":
        return []
    if kind == "m" or flag:
        return None
    if kind == "y":
        return b""
    if kind == "s":
        return ""
    if kind == "b":
        return False
    return 0


def decode(schema, buf, pos=0, end=None):
    """Parse `buf` (bytes-like) as `schema`; raises DecodeError on malformed input. `pos`/`end`: a slice of it
    (the recursion into sub-messages: decode itself, no helper, as every call level costs ~400 bytes of a BLE
    IRQ handler's 4 KiB stack, docs/protocol.md 1.2)."""
    if end is None:
        if not isinstance(buf, (bytes, bytearray, memoryview)):
            raise DecodeError("expected bytes, got %s" % type(buf).__name__)
        end = len(buf)
    spec = fields(schema)
    msg = {}
    for number, name, kind, sub, flag in spec:
        msg[name] = _default(kind, flag)
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0 or number > 0x1FFFFFFF:
            raise DecodeError("invalid field number %d" % number)
        field = None
        for f in spec:
            if f[0] == number:
                field = f
                break
        if field is None or wire_type != (_LEN if field[2] in "ysm" else _VARINT):
            # Unknown field, or a known number with another wire type: Google's parsers keep
            # such a field as unknown, so we skip it too.
            if wire_type == _EGROUP:
                raise DecodeError("end of group %d without a start" % number)
            pos = _skip(buf, pos, end, wire_type, number)
            continue
        _, name, kind, sub, flag = field
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos, end)
            if kind == "i":
                value &= 0xFFFFFFFF  # int32 keeps the low 32 bits of the (sign-extended) varint
                if value & 0x80000000:
                    value -= 0x100000000
            elif kind == "u":
                value &= 0xFFFFFFFF
            else:
                value = value != 0  # bool
        else:
            size, pos = _read_varint(buf, pos, end)
            if size > end - pos:
                raise DecodeError("%s: %d bytes announced, %d left" % (name, size, end - pos))
            if kind == "m":
                value = decode(sub, buf, pos, pos + size)
                if flag != "*" and msg[name] is not None:
                    # A sub-message seen twice is merged (protobuf semantics).
                    _merge(sub, msg[name], value)
                    value = msg[name]
            elif kind == "y":
                value = bytes(buf[pos:pos + size])
            else:
                try:
                    value = str(bytes(buf[pos:pos + size]), "utf-8")
                except (UnicodeError, ValueError):
                    raise DecodeError("%s is not valid UTF-8" % name)
            pos += size
        if flag == "*":
            msg[name].append(value)
        else:
            msg[name] = value
    return msg


def _merge(schema, into, other):
    for number, name, kind, sub, flag in fields(schema):
        value = other[name]
        if flag == "*":
            into[name].extend(value)
        elif kind == "m":
            if value is not None:
                if into[name] is None:
                    into[name] = value
                else:
                    _merge(sub, into[name], value)
        elif flag:
            if value is not None:
                into[name] = value
        elif value != _default(kind, flag):
            into[name] = value


# ---------------------------------------------------------------------------------------------
# encoding

def _varint(out, value):
    value &= _MASK64  # negative int32/enum values go out as 10-byte two's complement, like protobuf
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def encode(schema, msg, out=None):
    """Serialize dict `msg` as `schema`; missing keys count as defaults. Returns bytes; with `out` (a bytearray,
    the recursion into sub-messages: encode itself, no helper, for the BLE IRQ handler's stack), appends to it."""
    top = out is None
    if top:
        out = bytearray()
    for number, name, kind, sub, flag in fields(schema):
        value = msg.get(name)
        if value is None:
            continue
        values = value if flag == "*" else (value,)
        for value in values:
            if kind == "m":
                body = encode(sub, value, bytearray())
                _varint(out, (number << 3) | _LEN)
                _varint(out, len(body))
                out.extend(body)
            elif kind == "y" or kind == "s":
                if kind == "s":
                    value = value.encode("utf-8")
                if not value and not flag:
                    continue
                _varint(out, (number << 3) | _LEN)
                _varint(out, len(value))
                out.extend(value)
            else:
                value = int(value)
                if not value and not flag:
                    continue
                _varint(out, number << 3)
                _varint(out, value)
    return bytes(out) if top else out


# ---------------------------------------------------------------------------------------------
# schemas (docs/protocol.md 2.4, 3.1, 4.1). The enum values (Status, message types, station states) are
# const()s in the modules that use them, so they cost no heap here.

Empty = ""

# session.proto / sec0.proto / sec1.proto. Sec2 is not implemented on the node; its payload
# (field 12) is kept opaque, an unknown field to us.
S0SessionResp = "1:status:i"
Sec0Payload = "1:msg:i 20:sc:Empty 21:sr:S0SessionResp"
SessionCmd0 = "1:client_pubkey:y"
SessionResp0 = "1:status:i 2:device_pubkey:y 3:device_random:y"
SessionCmd1 = "2:client_verify_data:y"
SessionResp1 = "1:status:i 3:device_verify_data:y"
Sec1Payload = "1:msg:i 20:sc0:SessionCmd0 21:sr0:SessionResp0 22:sc1:SessionCmd1 23:sr1:SessionResp1"
SessionData = "2:sec_ver:i 10:sec0:Sec0Payload 11:sec1:Sec1Payload"

# wifi_constants.proto / wifi_config.proto
WifiConnectedState = "1:ip4_addr:s 2:auth_mode:i 3:ssid:y 4:bssid:y 5:channel:i"
RespGetStatus = "1:status:i 2:sta_state:i 10:fail_reason:i? 11:connected:WifiConnectedState"
CmdSetConfig = "1:ssid:y 2:passphrase:y 3:bssid:y 4:channel:i"
RespStatus = "1:status:i"  # RespSetConfig and RespApplyConfig
WiFiConfigPayload = ("1:msg:i 10:cmd_get_status:Empty 11:resp_get_status:RespGetStatus 12:cmd_set_config:CmdSetConfig"
                     " 13:resp_set_config:RespStatus 14:cmd_apply_config:Empty 15:resp_apply_config:RespStatus")

# wifi_scan.proto
CmdScanStart = "1:blocking:b 2:passive:b 3:group_channels:u 4:period_ms:u"
RespScanStatus = "1:scan_finished:b 2:result_count:u"
CmdScanResult = "1:start_index:u 2:count:u"
WiFiScanResult = "1:ssid:y 2:channel:u 3:rssi:i 4:bssid:y 5:auth:i"
RespScanResult = "1:entries:WiFiScanResult*"
WiFiScanPayload = ("1:msg:i 2:status:i 10:cmd_scan_start:CmdScanStart 11:resp_scan_start:Empty 12:cmd_scan_status:Empty"
                   " 13:resp_scan_status:RespScanStatus 14:cmd_scan_result:CmdScanResult"
                   " 15:resp_scan_result:RespScanResult")

# wifi_ctrl.proto
WiFiCtrlPayload = ("1:msg:i 2:status:i 11:cmd_ctrl_reset:Empty 12:resp_ctrl_reset:Empty 13:cmd_ctrl_reprov:Empty"
                   " 14:resp_ctrl_reprov:Empty")

# esp_rmaker_user_mapping.proto (package rainmaker). The older cloud.CloudConfigPayload
# (cmd_get_set_details / resp_get_set_details{Status, DeviceSecret}) is wire-identical (docs/protocol.md 4.1),
# so this one schema serves both variants.
CmdSetUserMapping = "1:UserID:s 2:SecretKey:s"
RespSetUserMapping = "1:Status:i 2:NodeId:s"
RMakerConfigPayload = "1:msg:i 10:cmd_set_user_mapping:CmdSetUserMapping 11:resp_set_user_mapping:RespSetUserMapping"

# esp_rmaker_chal_resp.proto: not served by this node (we never advertise ch_resp, docs/protocol.md 2.2), but
# kept so the codec covers every golden vector.
CmdCRPayload = "1:payload:y"
RespCRPayload = "1:payload:y 2:node_id:s"
RespGetNodeIDPayload = "1:node_id:s"
RMakerChRespPayload = ("1:msg:i 2:status:i 10:cmdChallengeResponsePayload:CmdCRPayload"
                       " 11:respChallengeResponsePayload:RespCRPayload 12:cmdGetNodeIDPayload:Empty"
                       " 13:respGetNodeIDPayload:RespGetNodeIDPayload 14:cmdDisableChalRespPayload:Empty"
                       " 15:respDisableChalRespPayload:Empty")
