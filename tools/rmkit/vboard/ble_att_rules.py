"""NimBLE's rules for a central's ATT traffic, as an ESP32 applies them: which PDUs its ATT layer serves,
which reads and writes it allows on an attribute, and how it compares attribute types. ble_att_server
answers with them; the sources are espressif/esp-nimble (branch nimble-1.5.0-idf, the same code in
nimble-1.4.0-idf and nimble-1.6.0-idf) and MicroPython's extmod/nimble/modbluetooth_nimble.c (v1.20 on).

An attribute's permissions are the flags ble_gatts.c and MicroPython register it with, which the radio puts
in each Bumble attribute's `permissions` (ble_radio.attribute_permissions):
- service and characteristic declarations: BLE_ATT_F_READ only (ble_gatts.c, ble_gatts_register_svc and
  ble_gatts_register_chr);
- a characteristic value: readable with FLAG_READ, writable with FLAG_WRITE or FLAG_WRITE_NO_RESPONSE
  (either allows Write Request and Write Command alike: ble_gatts_att_flags_from_chr_flags), needing
  encryption or authentication with the FLAG_*_ENCRYPTED/AUTHENTICATED flags;
- a descriptor: readable with FLAG_READ, writable with FLAG_WRITE or FLAG_WRITE_NO_RESPONSE, nothing else
  (mp_bluetooth_gatts_register_service: "NimBLE doesn't support security/privacy options on descriptors").
"""

from __future__ import annotations

import logging
from typing import Optional

from bumble import att
from bumble.att import Attribute, ErrorCode, Opcode
from bumble.core import UUID
from bumble.gatt import (GATT_CHARACTERISTIC_ATTRIBUTE_TYPE, GATT_INCLUDE_ATTRIBUTE_TYPE,
                         GATT_PRIMARY_SERVICE_ATTRIBUTE_TYPE, GATT_SECONDARY_SERVICE_ATTRIBUTE_TYPE)

log = logging.getLogger(__name__)

# the opcodes NimBLE's ATT layer dispatches (nimble/host/src/ble_att.c, ble_att_rx_dispatch); any other with
# the command bit (0x40) clear is answered Request Not Supported at handle 0 (ble_att_rx_handle_unknown_request)
NIMBLE_OPCODES = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F,
                            0x10, 0x11, 0x12, 0x13, 0x16, 0x17, 0x18, 0x19, 0x1B, 0x1D, 0x1E, 0x20, 0x21, 0x52, 0xD2})
DECLARATIONS = (GATT_PRIMARY_SERVICE_ATTRIBUTE_TYPE, GATT_SECONDARY_SERVICE_ATTRIBUTE_TYPE,
                GATT_INCLUDE_ATTRIBUTE_TYPE, GATT_CHARACTERISTIC_ATTRIBUTE_TYPE)
SERVICE_TYPES = (GATT_PRIMARY_SERVICE_ATTRIBUTE_TYPE, GATT_SECONDARY_SERVICE_ATTRIBUTE_TYPE)
_READ_SECURITY = Attribute.READ_REQUIRES_ENCRYPTION | Attribute.READ_REQUIRES_AUTHENTICATION
_WRITE_SECURITY = Attribute.WRITE_REQUIRES_ENCRYPTION | Attribute.WRITE_REQUIRES_AUTHENTICATION


def well_formed(pdu: bytes) -> Optional[bytes]:
    """The PDU as NimBLE serves it, or None for one it drops without an answer: too short for its opcode
    (ble_att_svr_pullup_req_base: BLE_HS_EBADDATA, no error code, so ble_att_svr_tx_rsp sends nothing), or a
    Read By Type / Read By Group Type whose UUID is neither 16 nor 128 bits (ble_att_svr_rx_read_type,
    ble_att_svr_rx_read_group_type: "Malformed packet"). A Read Multiple's odd last byte is ignored
    (ble_att_svr_build_read_mult_rsp reads handles while two bytes are left)."""
    if pdu[:1] in (bytes([Opcode.ATT_READ_BY_TYPE_REQUEST]), bytes([Opcode.ATT_READ_BY_GROUP_TYPE_REQUEST])) \
            and len(pdu) not in (5 + 2, 5 + 16):
        log.info("ATT: malformed %s of %d bytes dropped", Opcode(pdu[0]).name, len(pdu))
        return None
    if pdu[:1] in (bytes([Opcode.ATT_READ_MULTIPLE_REQUEST]), bytes([Opcode.ATT_READ_MULTIPLE_VARIABLE_REQUEST])) \
            and len(pdu) % 2 == 0:
        pdu = pdu[:-1]
    try:
        att.ATT_PDU.from_bytes(pdu)
    except Exception:  # noqa: BLE001 - whatever Bumble's parser raises, the PDU is malformed
        log.info("ATT: malformed PDU dropped: %s", pdu.hex())
        return None
    return pdu


def same_type(attribute_type: UUID, uuid: UUID, size: Optional[int] = None) -> bool:
    """NimBLE's ble_uuid_cmp: equal only in the same size (a 16-bit type asked for in 128 bits is another
    type), where Bumble's UUID equality widens both to 128 bits. `size`: the UUID's size in the request,
    which Bumble's parser loses (UUID.from_bytes hands back the registered 16-bit UUID)."""
    size = len(uuid.uuid_bytes) if size is None else size
    return len(attribute_type.uuid_bytes) == size and attribute_type == uuid


def requested_type_size(request) -> int:
    """The size of the UUID a Read By Type or Read By Group Type request carries, from its raw bytes."""
    return len(request.payload) - 4


def access_error(attribute: Attribute, is_read: bool) -> int:
    """ble_att_svr_check_perms on a link that was never paired: 0 when the access is allowed, else the ATT
    error. A flag asking for encryption or authentication finds no key stored for the central, hence
    Insufficient Authentication; one asking for authorization only is allowed, MicroPython answering no
    BLE_GAP_EVENT_AUTHORIZE."""
    permissions = attribute.permissions
    if is_read:
        if not permissions & Attribute.READABLE:
            return ErrorCode.READ_NOT_PERMITTED
        return ErrorCode.INSUFFICIENT_AUTHENTICATION if permissions & _READ_SECURITY else 0
    if not permissions & Attribute.WRITEABLE:
        return ErrorCode.WRITE_NOT_PERMITTED
    return ErrorCode.INSUFFICIENT_AUTHENTICATION if permissions & _WRITE_SECURITY else 0


def ends_group(group_type: UUID, attribute_type: UUID) -> bool:
    """ble_att_svr_is_valid_group_end for Find By Type Value's 16-bit type: a service group ends at the next
    service declaration, a characteristic group at the next service or characteristic declaration, any
    other type's "group" at the next attribute; a 128-bit type ends no group."""
    if len(attribute_type.uuid_bytes) != 2:
        return False
    if any(same_type(group_type, t) for t in SERVICE_TYPES):
        return any(same_type(attribute_type, t) for t in SERVICE_TYPES)
    if same_type(group_type, GATT_CHARACTERISTIC_ATTRIBUTE_TYPE):
        return any(same_type(attribute_type, t) for t in SERVICE_TYPES + (GATT_CHARACTERISTIC_ATTRIBUTE_TYPE,))
    return True
