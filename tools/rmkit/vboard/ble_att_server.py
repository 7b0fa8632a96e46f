"""The board's ATT server, answering a central as an ESP32's NimBLE does: Bumble's GATT server held to
NimBLE's per-attribute permissions and to its answer, error code and handle for every ATT request.

Bumble's server (bumble/gatt_server.py, 0.0.236) checks no read or write permission ("TODO: check
permissions"): a central's write to a declaration or to a read-only descriptor is kept. It also sends no
response at all when a read inside Read Multiple or Find By Type Value fails, and answers some requests with
other errors than NimBLE. Here each request is answered as ESP-IDF's NimBLE answers it: espressif/esp-nimble
branch nimble-1.5.0-idf (the same code in nimble-1.4.0-idf and nimble-1.6.0-idf, the NimBLE of the ESP-IDF
5.x releases MicroPython's ESP32 port builds with), nimble/host/src/ble_att_svr.c, function by function
below, with the permissions and rules of ble_att_rules.

NimBLE's host task serves one ATT PDU at a time, the board's IRQ handler included, so this server does too,
in the order the PDUs arrive.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Optional

from bumble import att, utils
from bumble.att import ATT_Error, Attribute, ErrorCode, Opcode
from bumble.gatt_server import Server

from rmkit.vboard.ble_att_rules import (DECLARATIONS, NIMBLE_OPCODES, SERVICE_TYPES, access_error, ends_group,
                                        requested_type_size, same_type, well_formed)

log = logging.getLogger(__name__)

# nimble/host/include/host/ble_att.h BLE_ATT_ATTR_MAX_LEN: the longest value a prepared write may build
ATTR_MAX_LEN = 512
# nimble/host/syscfg.yml BLE_ATT_SVR_MAX_PREP_ENTRIES (ESP-IDF's CONFIG_BT_NIMBLE_ATT_MAX_PREP_ENTRIES default)
MAX_PREP_ENTRIES = 64
# esp-nimble reads each attribute of a Read By Type into a 19-byte buffer and each of a Find By Type Value
# into a 16-byte one (ble_att_svr_build_read_type_rsp, ble_att_svr_fill_type_value: ble_att_svr_read_flat);
# a longer value fails that read with Unlikely Error. Upstream NimBLE has since lifted both limits.
READ_TYPE_MAX_VALUE = 19
FIND_TYPE_VALUE_MAX_VALUE = 16


def install(device) -> "NimbleAttServer":
    """Give a Bumble Device (before it connects) a NimbleAttServer in place of its own GATT server, with the
    default GAP and GATT services Device() had put in the one it replaces, and drop the ATT PDUs NimBLE
    would find malformed before Bumble parses them (Bumble raises into the event loop on those)."""
    server = NimbleAttServer(device)
    device.gatt_server = server
    device.add_default_services(add_gap_service=device.config.gap_service_enabled,
                                add_gatt_service=device.config.gatt_service_enabled)
    utils.setup_event_forwarding(server, device, "characteristic_subscription")
    deliver = device.on_gatt_pdu

    def on_att_pdu(connection_handle: int, pdu: bytes) -> None:
        pdu = well_formed(pdu)
        if pdu is None:
            return
        connection = device.lookup_connection(connection_handle)
        if pdu[0] not in NIMBLE_OPCODES and connection is not None:
            server.on_gatt_pdu(connection, att.ATT_PDU.from_bytes(pdu))  # Bumble would hand an odd one to its client
            return
        deliver(connection_handle, pdu)

    device.l2cap_channel_manager.register_fixed_channel(att.ATT_CID, on_att_pdu)
    return server


class NimbleAttServer(Server):
    """Bumble's Server answering as NimBLE's ble_att_svr.c (see the module's docstring). Exchange MTU and
    Find Information are Bumble's, which answers them as NimBLE does (no permission is involved)."""

    def __init__(self, device) -> None:
        super().__init__(device)
        self._pdus: Optional[asyncio.Queue] = None
        self._host_task: Optional[asyncio.Task] = None
        self._handlers = {
            Opcode.ATT_READ_REQUEST: self._read_request,
            Opcode.ATT_READ_BLOB_REQUEST: self._read_blob_request,
            Opcode.ATT_READ_MULTIPLE_REQUEST: self._read_multiple_request,
            Opcode.ATT_READ_MULTIPLE_VARIABLE_REQUEST: self._read_multiple_variable_request,
            Opcode.ATT_READ_BY_TYPE_REQUEST: self._read_by_type_request,
            Opcode.ATT_READ_BY_GROUP_TYPE_REQUEST: self._read_by_group_type_request,
            Opcode.ATT_FIND_BY_TYPE_VALUE_REQUEST: self._find_by_type_value_request,
            Opcode.ATT_WRITE_REQUEST: self._write_request,
            Opcode.ATT_WRITE_COMMAND: self._write_command,
            Opcode.ATT_PREPARE_WRITE_REQUEST: self._prepare_write_request,
            Opcode.ATT_EXECUTE_WRITE_REQUEST: self._execute_write_request,
        }

    # ---- one PDU at a time, as NimBLE's host task ----------------------------------------------

    def on_gatt_pdu(self, bearer, att_pdu: att.ATT_PDU) -> None:
        if self._pdus is None:
            self._pdus = asyncio.Queue()
            self._host_task = asyncio.get_running_loop().create_task(self._serve_pdus())
        self._pdus.put_nowait((bearer, att_pdu))

    def close(self) -> None:
        """Stop serving (the board's stack is gone)."""
        if self._host_task is not None:
            self._host_task.cancel()
            self._host_task = None

    async def _serve_pdus(self) -> None:
        while True:
            bearer, pdu = await self._pdus.get()
            handler = self._handlers.get(pdu.op_code)
            try:
                if handler is not None:
                    await handler(bearer, pdu)
                elif pdu.op_code in NIMBLE_OPCODES:
                    super().on_gatt_pdu(bearer, pdu)  # Exchange MTU, Find Information, confirmations
                elif not pdu.op_code & 0x40:
                    self._error(bearer, pdu.op_code, 0, ErrorCode.REQUEST_NOT_SUPPORTED)
            except Exception:  # noqa: BLE001 - a bug here must cost one answer, not the server
                log.exception("ATT: %s failed", pdu.name)
                if not pdu.op_code & 0x40:
                    self._answer_failure(bearer, pdu.op_code)

    def _answer_failure(self, bearer, op_code: int) -> None:
        try:
            self._error(bearer, op_code, 0, ErrorCode.UNLIKELY_ERROR)
        except Exception:  # noqa: BLE001 - the link may be gone too
            log.debug("ATT: no answer to 0x%02X either", op_code, exc_info=True)

    def _error(self, bearer, op_code: int, handle: int, error_code: int) -> None:
        # ble_att_svr_tx_error_rsp
        self.send_response(bearer, att.ATT_Error_Response(request_opcode_in_error=op_code,
                                                          attribute_handle_in_error=handle,
                                                          error_code=error_code))

    def _respond(self, bearer, op_code: int, payload: bytes) -> None:
        # ble_att_svr_tx_rsp truncates every response to the MTU (ble_att_truncate_to_mtu)
        self.send_gatt_pdu(bearer, (bytes([op_code]) + payload)[:bearer.att_mtu])

    # ---- access to one attribute: ble_att_svr_read, ble_att_svr_write --------------------------

    async def _read(self, bearer, attribute: Attribute, offset: int = 0) -> bytes:
        """The value from `offset` on, or ATT_Error. Permissions first, then the access callback (for the
        board's attributes its IRQ handler, which may refuse). ble_gatts_val_access: an offset past the end
        is Invalid Offset, at the end an empty value; declarations ignore the offset
        (ble_gatts_svc_access, ble_gatts_chr_def_access)."""
        code = access_error(attribute, is_read=True)
        if code:
            raise ATT_Error(error_code=code, att_handle=attribute.handle)
        value = bytes(await attribute.read_value(bearer))
        if attribute.type in DECLARATIONS:
            return value
        if offset > len(value):
            raise ATT_Error(error_code=ErrorCode.INVALID_OFFSET, att_handle=attribute.handle)
        return value[offset:]

    async def _read_flat(self, bearer, attribute: Attribute, max_len: int) -> bytes:
        # ble_att_svr_read_flat: a value longer than the caller's buffer is Unlikely Error
        value = await self._read(bearer, attribute)
        if len(value) > max_len:
            raise ATT_Error(error_code=ErrorCode.UNLIKELY_ERROR, att_handle=attribute.handle)
        return value

    async def _write(self, bearer, attribute: Attribute, value: bytes) -> None:
        code = access_error(attribute, is_read=False)
        if code:
            raise ATT_Error(error_code=code, att_handle=attribute.handle)
        await attribute.write_value(bearer, value)

    @staticmethod
    def _in_range(request) -> bool:
        """False for handle 0 or a start past the end: Invalid Handle, reported at the start handle (Core
        Vol 3, Part F, 3.4.3.1; ble_att_svr_rx_find_type_value, ble_att_svr_rx_read_type, ..._read_group_type)."""
        return 0 < request.starting_handle <= request.ending_handle

    # ---- reads ---------------------------------------------------------------------------------

    async def _read_request(self, bearer, request: att.ATT_Read_Request) -> None:
        # ble_att_svr_rx_read: every error reported at the requested handle
        await self._read_at(bearer, request, request.attribute_handle, 0, Opcode.ATT_READ_RESPONSE)

    async def _read_blob_request(self, bearer, request: att.ATT_Read_Blob_Request) -> None:
        # ble_att_svr_rx_read_blob: never Attribute Not Long, which the Bluetooth Core Specification allows and Bumble answers
        await self._read_at(bearer, request, request.attribute_handle, request.value_offset,
                            Opcode.ATT_READ_BLOB_RESPONSE)

    async def _read_at(self, bearer, request, handle: int, offset: int, response_op: int) -> None:
        attribute = self.get_attribute(handle)
        if attribute is None:
            self._error(bearer, request.op_code, handle, ErrorCode.INVALID_HANDLE)
            return
        try:
            value = await self._read(bearer, attribute, offset)
        except ATT_Error as error:
            self._error(bearer, request.op_code, handle, error.error_code)
            return
        self._respond(bearer, response_op, value)

    async def _read_multiple_request(self, bearer, request: att.ATT_Read_Multiple_Request) -> None:
        # ble_att_svr_build_read_mult_rsp: each value whole, one after the other, until the response holds
        # the MTU (the rest of the handles unread); the first handle that fails is the answer, an error at
        # that handle. The response is then cut to the MTU.
        values = b""
        for handle in request.set_of_handles:
            if 1 + len(values) >= bearer.att_mtu:
                break
            value = await self._read_listed(bearer, request, handle)
            if value is None:
                return
            values += value
        self._respond(bearer, Opcode.ATT_READ_MULTIPLE_RESPONSE, values)

    async def _read_multiple_variable_request(self, bearer, request) -> None:
        # ble_att_svr_build_read_mult_rsp_var: the same, each value after its 16-bit length
        tuples = b""
        for handle in request.set_of_handles:
            if 1 + len(tuples) >= bearer.att_mtu:
                break
            value = await self._read_listed(bearer, request, handle)
            if value is None:
                return
            tuples += struct.pack("<H", len(value)) + value
        self._respond(bearer, Opcode.ATT_READ_MULTIPLE_VARIABLE_RESPONSE, tuples)

    async def _read_listed(self, bearer, request, handle: int) -> Optional[bytes]:
        """A value for Read Multiple (Variable), or None once the error response is sent."""
        attribute = self.get_attribute(handle)
        if attribute is None:
            self._error(bearer, request.op_code, handle, ErrorCode.INVALID_HANDLE)
            return None
        try:
            return await self._read(bearer, attribute)
        except ATT_Error as error:
            self._error(bearer, request.op_code, handle, error.error_code)
            return None

    async def _read_by_type_request(self, bearer, request: att.ATT_Read_By_Type_Request) -> None:
        # ble_att_svr_rx_read_type, ble_att_svr_build_read_type_rsp: matching attributes in handle order, each
        # read (19 bytes at most, cut to MTU - 4); stop at one of another length or that does not fit. A read
        # that fails ends the list: with nothing listed yet it is the answer, at that attribute's handle.
        if not self._in_range(request):
            self._error(bearer, request.op_code, request.starting_handle, ErrorCode.INVALID_HANDLE)
            return
        entries: list[bytes] = []
        length = None
        failure = (ErrorCode.ATTRIBUTE_NOT_FOUND, request.starting_handle)
        size = requested_type_size(request)
        for attribute in self._attributes_between(request.starting_handle, request.ending_handle):
            if not same_type(attribute.type, request.attribute_type, size):
                continue
            try:
                value = await self._read_flat(bearer, attribute, READ_TYPE_MAX_VALUE)
            except ATT_Error as error:
                failure = (error.error_code, attribute.handle)
                break
            value = value[:bearer.att_mtu - 4]
            if length is not None and len(value) != length:
                break
            if 2 + sum(map(len, entries)) + 2 + len(value) > bearer.att_mtu:
                break
            length = len(value)
            entries.append(struct.pack("<H", attribute.handle) + value)
        if not entries:
            self._error(bearer, request.op_code, failure[1], failure[0])
            return
        self._respond(bearer, Opcode.ATT_READ_BY_TYPE_RESPONSE, bytes([2 + length]) + b"".join(entries))

    async def _read_by_group_type_request(self, bearer, request: att.ATT_Read_By_Group_Type_Request) -> None:
        # ble_att_svr_rx_read_group_type, ble_att_svr_build_read_group_type_rsp: only 16-bit primary or
        # secondary service types group; a group ends before the next service declaration or at the last
        # attribute in range; the database's last group ends at 0xFFFF; stop at a service UUID of another
        # size than the first, or when the next entry does not fit the MTU. Declarations are read without
        # a permission check (BLE_HS_CONN_HANDLE_NONE) and no error is reported from a read.
        if not self._in_range(request):
            self._error(bearer, request.op_code, request.starting_handle, ErrorCode.INVALID_HANDLE)
            return
        group_type = request.attribute_group_type
        size = requested_type_size(request)
        if not any(same_type(service_type, group_type, size) for service_type in SERVICE_TYPES):
            self._error(bearer, request.op_code, request.starting_handle, ErrorCode.UNSUPPORTED_GROUP_TYPE)
            return
        groups: list[tuple[int, int, bytes]] = []
        group: Optional[list] = None  # [start, end, service UUID bytes]
        size = None
        full = False
        for attribute in self._attributes_between(request.starting_handle, 0xFFFF):
            if attribute.handle > request.ending_handle:
                break
            if group is not None:
                if not any(same_type(attribute.type, t) for t in SERVICE_TYPES):
                    group[1] = attribute.handle
                    continue
                if not self._fits(bearer, groups, group):
                    full = True
                    group = None
                    break
                groups.append(tuple(group))
                group = None
            if same_type(attribute.type, group_type, size):
                service_uuid = bytes(await attribute.read_value(bearer))
                if size is not None and len(service_uuid) != size:
                    break
                size = len(service_uuid)
                group = [attribute.handle, attribute.handle, service_uuid]
        else:
            if group is not None:
                group[1] = 0xFFFF  # the end of the database: no follow-up request needed
        if group is not None and not full and self._fits(bearer, groups, group):
            groups.append(tuple(group))
        if not groups:
            self._error(bearer, request.op_code, request.starting_handle, ErrorCode.ATTRIBUTE_NOT_FOUND)
            return
        entries = b"".join(struct.pack("<HH", start, end) + uuid for start, end, uuid in groups)
        self._respond(bearer, Opcode.ATT_READ_BY_GROUP_TYPE_RESPONSE, bytes([4 + size]) + entries)

    @staticmethod
    def _fits(bearer, groups: list, group: list) -> bool:
        used = 2 + sum(4 + len(uuid) for _, _, uuid in groups)
        return used + 4 + len(group[2]) <= bearer.att_mtu

    async def _find_by_type_value_request(self, bearer, request: att.ATT_Find_By_Type_Value_Request) -> None:
        # ble_att_svr_rx_find_type_value, ble_att_svr_fill_type_value: attributes of the 16-bit type in range,
        # each read (16 bytes at most); it matches when the request's value starts with the attribute's
        # (os_mbuf_cmpf compares the attribute's length only); its group runs to the next attribute that ends
        # it (ble_att_svr_is_valid_group_end). Any read that fails is the answer, at the start handle, what
        # was found before discarded.
        if not self._in_range(request):
            self._error(bearer, request.op_code, request.starting_handle, ErrorCode.INVALID_HANDLE)
            return
        wanted = request.attribute_type
        found: list[tuple[int, int]] = []
        first = previous = 0
        for attribute in self._attributes_between(request.starting_handle, 0xFFFF):
            if not first and attribute.handle > request.ending_handle:
                break
            if first:
                if not ends_group(wanted, attribute.type):
                    previous = attribute.handle
                    continue
                if 1 + 4 * (len(found) + 1) > bearer.att_mtu:
                    first = 0
                    break
                found.append((first, previous))
                first = previous = 0
                if attribute.handle > request.ending_handle:
                    break
            if same_type(attribute.type, wanted):
                try:
                    value = await self._read_flat(bearer, attribute, FIND_TYPE_VALUE_MAX_VALUE)
                except ATT_Error as error:
                    self._error(bearer, request.op_code, request.starting_handle, error.error_code)
                    return
                if request.attribute_value[:len(value)] == value and len(request.attribute_value) >= len(value):
                    first = previous = attribute.handle
        if first and 1 + 4 * (len(found) + 1) <= bearer.att_mtu:
            found.append((first, previous))
        if not found:
            self._error(bearer, request.op_code, request.starting_handle, ErrorCode.ATTRIBUTE_NOT_FOUND)
            return
        self._respond(bearer, Opcode.ATT_FIND_BY_TYPE_VALUE_RESPONSE,
                      b"".join(struct.pack("<HH", start, end) for start, end in found))

    def _attributes_between(self, start: int, end: int) -> list[Attribute]:
        return [attribute for attribute in self.attributes if start <= attribute.handle <= end]

    # ---- writes --------------------------------------------------------------------------------

    async def _write_request(self, bearer, request: att.ATT_Write_Request) -> None:
        # ble_att_svr_rx_write: errors at the requested handle; no length check of its own (the board's
        # buffer cuts a longer value, MicroPython's characteristic_access_cb)
        attribute = self.get_attribute(request.attribute_handle)
        if attribute is None:
            self._error(bearer, request.op_code, request.attribute_handle, ErrorCode.INVALID_HANDLE)
            return
        try:
            await self._write(bearer, attribute, request.attribute_value)
        except ATT_Error as error:
            self._error(bearer, request.op_code, request.attribute_handle, error.error_code)
            return
        self._respond(bearer, Opcode.ATT_WRITE_RESPONSE, b"")

    async def _write_command(self, bearer, command: att.ATT_Write_Command) -> None:
        # ble_att_svr_rx_write_no_rsp: an unknown handle or a refused write is dropped without a word
        attribute = self.get_attribute(command.attribute_handle)
        if attribute is None:
            return
        try:
            await self._write(bearer, attribute, command.attribute_value)
        except ATT_Error as error:
            log.debug("ATT: Write Command to 0x%04X dropped (%s)", command.attribute_handle, error.error_name)

    async def _prepare_write_request(self, bearer, request: att.ATT_Prepare_Write_Request) -> None:
        # ble_att_svr_rx_prep_write: the handle must exist and be writable now (not only at execution);
        # the queue holds MAX_PREP_ENTRIES parts, kept in (handle, offset) order
        # (ble_att_svr_insert_prep_entry, ble_att_svr_prep_find_prev)
        handle = request.attribute_handle
        attribute = self.get_attribute(handle)
        if attribute is None:
            self._error(bearer, request.op_code, handle, ErrorCode.INVALID_HANDLE)
            return
        code = access_error(attribute, is_read=False)
        if code:
            self._error(bearer, request.op_code, handle, code)
            return
        queue = self.prepared_writes.setdefault(bearer, [])
        if len(queue) >= MAX_PREP_ENTRIES:
            self._error(bearer, request.op_code, handle, ErrorCode.PREPARE_QUEUE_FULL)
            return
        queue.append((handle, request.value_offset, request.part_attribute_value))
        queue.sort(key=lambda part: (part[0], part[1]))  # stable: equal offsets keep their order
        self._respond(bearer, Opcode.ATT_PREPARE_WRITE_RESPONSE, bytes(request)[1:])

    async def _execute_write_request(self, bearer, request: att.ATT_Execute_Write_Request) -> None:
        # ble_att_svr_rx_exec_write: the queue is taken whatever happens; flags 0 cancels it. Otherwise it is
        # checked whole first (ble_att_svr_prep_validate: each attribute's parts from offset 0, each part
        # where the one before ended, at most ATTR_MAX_LEN bytes), then written attribute by attribute
        # (ble_att_svr_prep_write), stopping at the first that fails.
        queue = self.prepared_writes.pop(bearer, [])
        if request.flags:
            values: dict[int, bytearray] = {}
            for handle, offset, part in queue:
                value = values.setdefault(handle, bytearray())
                if offset != len(value):
                    self._error(bearer, request.op_code, handle, ErrorCode.INVALID_OFFSET)
                    return
                value += part
                if len(value) > ATTR_MAX_LEN:
                    self._error(bearer, request.op_code, handle, ErrorCode.INVALID_ATTRIBUTE_LENGTH)
                    return
            for handle, value in values.items():
                try:
                    await self._write(bearer, self.get_attribute(handle), bytes(value))
                except ATT_Error as error:
                    self._error(bearer, request.op_code, handle, error.error_code)
                    return
        self._respond(bearer, Opcode.ATT_EXECUTE_WRITE_RESPONSE, b"")
