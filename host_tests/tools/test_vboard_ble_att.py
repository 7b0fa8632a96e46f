"""The virtual board's ATT server (rmkit.vboard.ble_att_server) answers a raw ATT central as an ESP32's NimBLE
does (espressif/esp-nimble nimble/host/src/ble_att_svr.c): every attribute's read and write permissions
enforced, for every request type, with NimBLE's error code at NimBLE's handle.

Permissions are what MicroPython registers (extmod/nimble/modbluetooth_nimble.c): declarations read-only,
values and descriptors as their FLAG_READ / FLAG_WRITE / FLAG_WRITE_NO_RESPONSE say, a value's
encryption flags refused on a link that was never paired. Refused reads and writes never reach the
board's IRQ handler."""

from __future__ import annotations

import asyncio
import struct

import pytest

from bumble import att
from bumble.att import Opcode
from bumble.core import UUID

from support.vboard_ble import CHAR, NAME, SERVICE, att_command, att_raw, att_request, board_value, connect

pytestmark = pytest.mark.board  # tier: virtual boards (support/tiers.py)

ATT_PERIPHERAL = """
import bluetooth
ble = bluetooth.BLE()
ble.active(True)
events = []
refuse = {{}}  # handle -> the ATT error the IRQ handler answers a read of it with
name = {name!r}
def advertise():
    ble.gap_advertise(100000, bytes((2, 1, 6, len(name) + 1, 9)) + name)
def irq(event, data):
    events.append((event,) + tuple(bytes(x) if isinstance(x, memoryview) else x for x in data))
    if event == 2:
        advertise()  # for the next central, as the node does
    if event == 4:
        return refuse.get(data[1], 0)
ble.irq(irq)
R, W, WNR = bluetooth.FLAG_READ, bluetooth.FLAG_WRITE, bluetooth.FLAG_WRITE_NO_RESPONSE
READ_ENCRYPTED, WRITE_ENCRYPTED = 0x0200, 0x1000
U = bluetooth.UUID
(handles,) = ble.gatts_register_services(((U({service!r}), (
    (U({char!r}), R | W, ((U(0x2901), R), (U({note!r}), R | W))),
    (U(0xFF02), R),
    (U(0xFF03), W),
    (U(0xFF04), WNR),
    (U(0xFF05), R | READ_ENCRYPTED | W | WRITE_ENCRYPTED, ((U(0x2901), R | READ_ENCRYPTED),)),
    (U(0xFF06), R),
)),))
rw, rw_name, note, ro, wo, wnr, enc, enc_name, long = handles
ble.gatts_set_buffer(rw, 100)
for handle, value in ((rw, b"rw-value"), (rw_name, b"prov-session"), (note, b"note"), (ro, b"read-only"),
                      (enc, b"secret"), (enc_name, b"sealed"), (long, b"x" * 24)):
    ble.gatts_write(handle, value)
advertise()
"""
NOTE = "6e6f7465-0000-4000-8000-00805f9b34fb"
UNKNOWN = 0x0FFF
READ_NOT_PERMITTED, WRITE_NOT_PERMITTED, INSUFFICIENT_AUTHENTICATION = 0x02, 0x03, 0x05
INVALID_HANDLE, INVALID_OFFSET, ATTRIBUTE_NOT_FOUND, UNLIKELY_ERROR = 0x01, 0x07, 0x0A, 0x0E
REQUEST_NOT_SUPPORTED, UNSUPPORTED_GROUP_TYPE = 0x06, 0x10
APP_ERROR = 0x80  # what the IRQ handler refuses a read with here


class Gatt:
    """The peripheral's handles by name (rw, rw_name, note, ro, wo, wnr, enc, enc_name, long), the
    declarations before them (rw_decl, ...; service: the service declaration), and its board."""

    def __init__(self, board):
        self.board = board
        names = ("rw", "rw_name", "note", "ro", "wo", "wnr", "enc", "enc_name", "long")
        self.handles = dict(zip(names, eval(board_value(board, "handles"))))
        for name in ("rw", "ro", "wo", "wnr", "enc", "long"):
            self.handles[name + "_decl"] = self.handles[name] - 1
        self.handles["service"] = self.handles["rw_decl"] - 1

    def __getattr__(self, name: str) -> int:
        return self.handles[name]

    def refuse_reads_of(self, handle: int) -> None:
        self.board.exec(f"refuse[{handle}] = {APP_ERROR}")

    def irqs(self, event: int) -> list[int]:
        """Handles of the IRQs of one kind the board's handler got (3 write, 4 read request)."""
        return [e[2] for e in eval(board_value(self.board, "events")) if e[0] == event]

    def value(self, handle: int) -> bytes:
        return eval(board_value(self.board, f"ble.gatts_read({handle})"))


@pytest.fixture
def gatt(vboard) -> Gatt:
    vboard.exec(ATT_PERIPHERAL.format(service=SERVICE, char=CHAR, note=NOTE, name=NAME.encode()))
    return Gatt(vboard)


def with_central(gatt: Gatt, scenario):
    """Run `scenario(central)` with a central connected at MTU 23 (the board's, never configured)."""
    async def run():
        central = await connect(gatt.board)
        try:
            assert central.connection.att_mtu == 23
            return await scenario(central)
        finally:
            await central.__aexit__(None, None, None)

    return asyncio.run(asyncio.wait_for(run(), 60))


def error(response) -> tuple[int, int, int]:
    """An ATT Error Response as (request opcode, handle, error code)."""
    assert response.op_code == Opcode.ATT_ERROR_RESPONSE, response
    return response.request_opcode_in_error, response.attribute_handle_in_error, response.error_code


def uuid16(value: int) -> UUID:
    return UUID.from_16_bits(value)


# -- writes ---------------------------------------------------------------------------------------------

def test_write_request_to_a_declaration_or_read_only_descriptor_is_write_not_permitted(gatt):
    """The 1-byte write that renamed an endpoint: refused at the written handle, and nothing changes."""
    read_only = (gatt.rw_name, gatt.rw_decl, gatt.service, gatt.ro)

    async def scenario(central):
        refused = [error(await att_request(central, att.ATT_Write_Request(attribute_handle=handle,
                                                                            attribute_value=b"X")))
                   for handle in read_only]
        allowed = [(await att_request(central, att.ATT_Write_Request(attribute_handle=handle,
                                                                     attribute_value=b"ok"))).op_code
                   for handle in (gatt.wo, gatt.wnr, gatt.note)]
        unknown = error(await att_request(central, att.ATT_Write_Request(attribute_handle=UNKNOWN,
                                                                         attribute_value=b"X")))
        declaration = (await att_request(central, att.ATT_Read_Request(attribute_handle=gatt.rw_decl)))
        return refused, allowed, unknown, declaration.attribute_value

    declaration_before = with_central(gatt, lambda central: _read(central, gatt.rw_decl))
    refused, allowed, unknown, declaration = with_central(gatt, scenario)
    assert refused == [(Opcode.ATT_WRITE_REQUEST, handle, WRITE_NOT_PERMITTED) for handle in read_only]
    # a value with FLAG_WRITE_NO_RESPONSE only takes a Write Request too (ble_gatts_att_flags_from_chr_flags)
    assert allowed == [Opcode.ATT_WRITE_RESPONSE] * 3
    assert unknown == (Opcode.ATT_WRITE_REQUEST, UNKNOWN, INVALID_HANDLE)
    assert declaration == declaration_before
    assert gatt.value(gatt.rw_name) == b"prov-session" and gatt.value(gatt.ro) == b"read-only"
    assert gatt.irqs(3) == [gatt.wo, gatt.wnr, gatt.note]


async def _read(central, handle: int) -> bytes:
    return (await att_request(central, att.ATT_Read_Request(attribute_handle=handle))).attribute_value


def test_write_command_to_what_may_not_be_written_is_dropped_without_an_answer(gatt):
    async def scenario(central):
        for handle in (gatt.rw_name, gatt.rw_decl, gatt.ro, gatt.enc, UNKNOWN, gatt.wnr):
            await att_command(central, att.ATT_Write_Command(attribute_handle=handle, attribute_value=b"X"))
        # the next request gets its own answer: nothing was answered to the commands before it
        return await _read(central, gatt.rw_name)

    assert with_central(gatt, scenario) == b"prov-session"
    assert gatt.irqs(3) == [gatt.wnr]
    assert gatt.value(gatt.ro) == b"read-only" and gatt.value(gatt.enc) == b"secret"


def test_prepare_write_is_refused_at_once_where_the_write_would_be(gatt):
    async def prepare(central, handle, offset=0, part=b"part"):
        return await att_request(central, att.ATT_Prepare_Write_Request(
            attribute_handle=handle, value_offset=offset, part_attribute_value=part))

    async def scenario(central):
        refused = [error(await prepare(central, handle)) for handle in (gatt.rw_name, gatt.ro, gatt.enc, UNKNOWN)]
        echo = await prepare(central, gatt.wo, 0, b"long write")
        executed = await att_request(central, att.ATT_Execute_Write_Request(flags=1))
        return refused, echo, executed

    refused, echo, executed = with_central(gatt, scenario)
    assert refused == [(Opcode.ATT_PREPARE_WRITE_REQUEST, gatt.rw_name, WRITE_NOT_PERMITTED),
                       (Opcode.ATT_PREPARE_WRITE_REQUEST, gatt.ro, WRITE_NOT_PERMITTED),
                       (Opcode.ATT_PREPARE_WRITE_REQUEST, gatt.enc, INSUFFICIENT_AUTHENTICATION),
                       (Opcode.ATT_PREPARE_WRITE_REQUEST, UNKNOWN, INVALID_HANDLE)]
    assert (echo.op_code, echo.attribute_handle, echo.value_offset, echo.part_attribute_value) == \
        (Opcode.ATT_PREPARE_WRITE_RESPONSE, gatt.wo, 0, b"long write")
    assert executed.op_code == Opcode.ATT_EXECUTE_WRITE_RESPONSE
    assert gatt.value(gatt.wo) == b"long write" and gatt.irqs(3) == [gatt.wo]


def test_execute_write_takes_parts_in_offset_order_and_refuses_gaps_and_overlaps(gatt):
    """NimBLE keeps the queue sorted by handle and offset, and checks it whole before writing: each value from
    offset 0, each part where the one before ended (ble_att_svr_prep_validate); flags 0 cancels."""
    async def execute(central, parts, flags=1):
        for offset, part in parts:
            await att_request(central, att.ATT_Prepare_Write_Request(
                attribute_handle=gatt.rw, value_offset=offset, part_attribute_value=part))
        return await att_request(central, att.ATT_Execute_Write_Request(flags=flags))

    async def scenario(central):
        return [await execute(central, [(10, b"B" * 10), (0, b"A" * 10)]),  # out of order: sorted
                await execute(central, [(0, b"C" * 10), (12, b"D" * 6)]),  # a gap
                await execute(central, [(0, b"E" * 10), (5, b"F" * 10)]),  # an overlap
                await execute(central, [(0, b"G" * 10)], flags=0)]  # cancelled

    in_order, gap, overlap, cancelled = with_central(gatt, scenario)
    assert in_order.op_code == cancelled.op_code == Opcode.ATT_EXECUTE_WRITE_RESPONSE
    assert error(gap) == error(overlap) == (Opcode.ATT_EXECUTE_WRITE_REQUEST, gatt.rw, INVALID_OFFSET)
    assert gatt.value(gatt.rw) == b"A" * 10 + b"B" * 10
    assert gatt.irqs(3) == [gatt.rw]


# -- reads ----------------------------------------------------------------------------------------------

def test_read_request_refuses_before_the_board_is_asked(gatt):
    async def scenario(central):
        refused = [error(await att_request(central, att.ATT_Read_Request(attribute_handle=handle)))
                   for handle in (gatt.wo, gatt.enc, UNKNOWN)]
        # a descriptor's security flags are ignored (MicroPython registers descriptors with read/write only)
        return refused, await _read(central, gatt.enc_name), await _read(central, gatt.rw_decl)

    refused, enc_name, declaration = with_central(gatt, scenario)
    assert refused == [(Opcode.ATT_READ_REQUEST, gatt.wo, READ_NOT_PERMITTED),
                       (Opcode.ATT_READ_REQUEST, gatt.enc, INSUFFICIENT_AUTHENTICATION),
                       (Opcode.ATT_READ_REQUEST, UNKNOWN, INVALID_HANDLE)]
    assert enc_name == b"sealed"
    assert declaration == bytes([0x0A]) + struct.pack("<H", gatt.rw) + UUID(CHAR).to_bytes()  # read | write
    assert gatt.irqs(4) == [gatt.enc_name]  # declarations are the stack's; refused reads never reach the board


def test_read_blob_as_nimble_answers_it(gatt):
    """Read Blob at the end of a value is an empty part (NimBLE never answers Attribute Not Long); past the
    end, Invalid Offset; a declaration ignores the offset (ble_gatts_chr_def_access)."""
    async def blob(central, handle, offset):
        return await att_request(central, att.ATT_Read_Blob_Request(attribute_handle=handle, value_offset=offset))

    async def scenario(central):
        return (await blob(central, gatt.wo, 0), await blob(central, gatt.rw, len(b"rw-value")),
                await blob(central, gatt.rw, len(b"rw-value") + 1), await blob(central, gatt.rw, 3),
                await blob(central, gatt.rw_decl, 3), await _read(central, gatt.rw_decl))

    refused, at_end, past_end, part, declaration, whole = with_central(gatt, scenario)
    assert error(refused) == (Opcode.ATT_READ_BLOB_REQUEST, gatt.wo, READ_NOT_PERMITTED)
    assert (at_end.op_code, at_end.part_attribute_value) == (Opcode.ATT_READ_BLOB_RESPONSE, b"")
    assert error(past_end) == (Opcode.ATT_READ_BLOB_REQUEST, gatt.rw, INVALID_OFFSET)
    assert part.part_attribute_value == b"value"
    assert declaration.part_attribute_value == whole


def test_read_multiple_answers_the_first_handle_that_fails(gatt):
    """An attribute refused by permission or by the board's IRQ handler, or a handle that does not exist: an
    ATT error for that handle (Bumble sent no response at all for a refused read)."""
    gatt.refuse_reads_of(gatt.ro)

    async def multiple(central, *handles, variable=False):
        kind = att.ATT_Read_Multiple_Variable_Request if variable else att.ATT_Read_Multiple_Request
        return await att_request(central, kind(set_of_handles=list(handles)))

    async def scenario(central):
        return (await multiple(central, gatt.rw, gatt.wo), await multiple(central, gatt.rw, gatt.ro, gatt.wo),
                await multiple(central, gatt.rw, UNKNOWN), await multiple(central, gatt.rw, gatt.enc_name),
                await multiple(central, gatt.rw, gatt.ro, variable=True),
                await multiple(central, gatt.rw, gatt.enc_name, variable=True))

    not_permitted, refused, unknown, both, refused_var, both_var = with_central(gatt, scenario)
    assert error(not_permitted) == (Opcode.ATT_READ_MULTIPLE_REQUEST, gatt.wo, READ_NOT_PERMITTED)
    assert error(refused) == (Opcode.ATT_READ_MULTIPLE_REQUEST, gatt.ro, APP_ERROR)
    assert error(unknown) == (Opcode.ATT_READ_MULTIPLE_REQUEST, UNKNOWN, INVALID_HANDLE)
    assert both.set_of_values == b"rw-value" + b"sealed"
    assert error(refused_var) == (Opcode.ATT_READ_MULTIPLE_VARIABLE_REQUEST, gatt.ro, APP_ERROR)
    assert both_var.length_value_tuple_list == [(8, b"rw-value"), (6, b"sealed")]


def test_read_by_type_stops_at_what_it_may_not_read(gatt):
    """The first matching attribute that cannot be read is the answer, at its handle: not permitted, needing
    encryption, refused by the board, or longer than esp-nimble's 19-byte buffer (Unlikely Error)."""
    gatt.refuse_reads_of(gatt.ro)

    async def by_type(central, uuid, start=1, end=0xFFFF):
        return await att_request(central, att.ATT_Read_By_Type_Request(
            starting_handle=start, ending_handle=end, attribute_type=uuid))

    async def scenario(central):
        return ([await by_type(central, uuid16(u)) for u in (0xFF03, 0xFF05, 0xFF02, 0xFF06)],
                await by_type(central, uuid16(0x2901)), await by_type(central, uuid16(0x2803), gatt.service),
                await att_request(central, struct.pack("<BHH", Opcode.ATT_READ_BY_TYPE_REQUEST, gatt.service, 0xFFFF)
                                  + uuid16(0x2803).to_bytes(force_128=True)),
                await by_type(central, uuid16(0x2901), 0), await by_type(central, uuid16(0x2901), 9, 8))

    refused, names, declarations, as_128_bits, zero, backwards = with_central(gatt, scenario)
    assert [error(r) for r in refused] == [(Opcode.ATT_READ_BY_TYPE_REQUEST, gatt.wo, READ_NOT_PERMITTED),
                                           (Opcode.ATT_READ_BY_TYPE_REQUEST, gatt.enc, INSUFFICIENT_AUTHENTICATION),
                                           (Opcode.ATT_READ_BY_TYPE_REQUEST, gatt.ro, APP_ERROR),
                                           (Opcode.ATT_READ_BY_TYPE_REQUEST, gatt.long, UNLIKELY_ERROR)]
    assert names.attributes == [(gatt.rw_name, b"prov-session")]  # "sealed" is another length: a next request
    assert [handle for handle, _ in declarations.attributes] == [gatt.rw_decl]  # 128-bit UUID first, then 16-bit
    # NimBLE compares UUIDs in their size (ble_uuid_cmp): 0x2803 written as 128 bits is another type
    assert error(as_128_bits) == (Opcode.ATT_READ_BY_TYPE_REQUEST, gatt.service, ATTRIBUTE_NOT_FOUND)
    assert error(zero) == (Opcode.ATT_READ_BY_TYPE_REQUEST, 0, INVALID_HANDLE)
    assert error(backwards) == (Opcode.ATT_READ_BY_TYPE_REQUEST, 9, INVALID_HANDLE)


def test_read_by_group_type_lists_services_as_nimble_does(gatt):
    """Only 16-bit primary and secondary service types group; the database's last group ends at 0xFFFF."""
    async def group(central, uuid=uuid16(0x2800), start=1, end=0xFFFF):
        return await att_request(central, att.ATT_Read_By_Group_Type_Request(
            starting_handle=start, ending_handle=end, attribute_group_type=uuid))

    async def scenario(central):
        return (await group(central, start=gatt.service), await group(central, start=gatt.service, end=gatt.ro),
                await group(central, uuid16(0x2803)),
                await att_request(central, struct.pack("<BHH", Opcode.ATT_READ_BY_GROUP_TYPE_REQUEST, 1, 0xFFFF)
                                  + uuid16(0x2800).to_bytes(force_128=True)),
                await group(central, start=0), await group(central, start=0xFFF0))

    ours, cut, characteristic, as_128_bits, zero, past_end = with_central(gatt, scenario)
    assert ours.attributes == [(gatt.service, 0xFFFF, UUID(SERVICE).to_bytes())]
    assert cut.attributes == [(gatt.service, gatt.ro, UUID(SERVICE).to_bytes())]  # ends within the range
    assert error(characteristic) == (Opcode.ATT_READ_BY_GROUP_TYPE_REQUEST, 1, UNSUPPORTED_GROUP_TYPE)
    assert error(as_128_bits) == (Opcode.ATT_READ_BY_GROUP_TYPE_REQUEST, 1, UNSUPPORTED_GROUP_TYPE)
    assert error(zero) == (Opcode.ATT_READ_BY_GROUP_TYPE_REQUEST, 0, INVALID_HANDLE)
    assert error(past_end) == (Opcode.ATT_READ_BY_GROUP_TYPE_REQUEST, 0xFFF0, ATTRIBUTE_NOT_FOUND)


def test_find_information_lists_every_attribute_whatever_it_permits(gatt):
    async def find(central, start, end):
        return await att_request(central, att.ATT_Find_Information_Request(starting_handle=start,
                                                                            ending_handle=end))

    async def scenario(central):
        return (await find(central, gatt.wo_decl, gatt.wnr), await find(central, 0, 5),
                await find(central, 0xFFF0, 0xFFFF))

    listed, zero, past_end = with_central(gatt, scenario)
    assert [(h, UUID.from_bytes(u)) for h, u in listed.information] == [
        (gatt.wo_decl, uuid16(0x2803)), (gatt.wo, uuid16(0xFF03)), (gatt.wnr_decl, uuid16(0x2803)),
        (gatt.wnr, uuid16(0xFF04))]
    assert error(zero) == (Opcode.ATT_FIND_INFORMATION_REQUEST, 0, INVALID_HANDLE)
    assert error(past_end) == (Opcode.ATT_FIND_INFORMATION_REQUEST, 0xFFF0, ATTRIBUTE_NOT_FOUND)
    assert gatt.irqs(4) == []


def test_find_by_type_value_answers_a_read_it_may_not_make_at_the_start_handle(gatt):
    """Every attribute of the type is read (the board's handler asked for the board's own); any read that
    fails is the answer, at the start handle (ble_att_svr_fill_type_value), what matched before dropped."""
    async def find(central, uuid, value, start=1):
        return await att_request(central, att.ATT_Find_By_Type_Value_Request(
            starting_handle=start, ending_handle=0xFFFF, attribute_type=uuid16(uuid), attribute_value=value))

    async def scenario(central):
        found = (await find(central, 0x2800, UUID(SERVICE).to_bytes()), await find(central, 0x2901, b"prov-session"),
                 await find(central, 0x2901, b"prov-session and more"), await find(central, 0xFF03, b""),
                 await find(central, 0x2901, b"x", start=0))
        gatt.refuse_reads_of(gatt.rw_name)
        return found + (await find(central, 0x2901, b"sealed"),)

    service, name, prefixed, not_permitted, zero, refused = with_central(gatt, scenario)
    last_handle = gatt.long
    assert service.handles_information == [(gatt.service, last_handle)]
    # a "group" of a type that groups nothing ends at the next attribute with a 16-bit type
    # (ble_att_svr_is_valid_group_end): the 128-bit descriptor after the name is in it
    assert name.handles_information == [(gatt.rw_name, gatt.note)]
    # esp-nimble compares the request's value over the attribute's length only (os_mbuf_cmpf)
    assert prefixed.handles_information == [(gatt.rw_name, gatt.note)]
    assert error(not_permitted) == (Opcode.ATT_FIND_BY_TYPE_VALUE_REQUEST, 1, READ_NOT_PERMITTED)
    assert error(zero) == (Opcode.ATT_FIND_BY_TYPE_VALUE_REQUEST, 0, INVALID_HANDLE)
    assert error(refused) == (Opcode.ATT_FIND_BY_TYPE_VALUE_REQUEST, 1, APP_ERROR)


# -- what NimBLE does not serve -------------------------------------------------------------------------

def test_malformed_requests_get_no_answer_and_unknown_ones_request_not_supported(gatt):
    async def scenario(central):
        await att_raw(central, bytes([Opcode.ATT_READ_REQUEST, 0x01]))  # a handle of one byte
        await att_raw(central, bytes([Opcode.ATT_READ_BY_TYPE_REQUEST, 1, 0, 0xFF, 0xFF, 1, 2, 3, 4]))  # 32-bit UUID
        await att_raw(central, bytes([0x70, 1, 2]))  # an unknown command
        value = await _read(central, gatt.rw_name)  # answered next: the malformed ones got nothing
        unknown = await att_request(central, att.ATT_PDU.from_bytes(bytes([0x30, 1, 2])))
        return value, unknown

    value, unknown = with_central(gatt, scenario)
    assert value == b"prov-session"
    assert error(unknown) == (0x30, 0, REQUEST_NOT_SUPPORTED)
