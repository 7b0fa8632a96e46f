"""A BLE peripheral on a virtual board for the tests of its Bluetooth LE (sim/vb_bluetooth.py): one
READ|WRITE characteristic with a 0x2901 descriptor, an IRQ handler that records every event, and a
Bumble central (rmkit.vboard.ble_central) that reaches it over the board's radio; a raw ATT central
(att_request, att_command) for the ATT server's answers."""

import asyncio

from support.wait import wait_until

from rmkit.vboard.ble_central import BleCentral

SERVICE = "021a9004-0382-4aea-bff4-6b3f1c5adfb4"
CHAR = "021aff50-0382-4aea-bff4-6b3f1c5adfb4"
NAME = "PROV_abcdef"

PERIPHERAL = """
import bluetooth
ble = bluetooth.BLE()
ble.active(True)
events = []
deny = [0]
def irq(event, data):
    events.append((event,) + tuple(bytes(x) if isinstance(x, memoryview) else x for x in data))
    if event == 4:
        return deny[0]
ble.irq(irq)
((value_h, desc_h),) = ble.gatts_register_services(((bluetooth.UUID({service!r}),
    ((bluetooth.UUID({char!r}), bluetooth.FLAG_READ | bluetooth.FLAG_WRITE,
      ((bluetooth.UUID(0x2901), bluetooth.FLAG_READ),)),)),))
ble.gatts_write(desc_h, b"prov-session")
{extra}
name = {name!r}
ble.gap_advertise(100000, bytes((2, 1, 6, len(name) + 1, 9)) + name)
"""


def peripheral(board, extra=""):
    board.exec(PERIPHERAL.format(service=SERVICE, char=CHAR, name=NAME.encode(), extra=extra))


def board_value(board, expr):
    return board.exec(f"print(repr({expr}))").strip()


async def connect(board, exchange_mtu=True, supervision_timeout_ms=None):
    central = BleCentral(board.ble_hci_port)
    await central.__aenter__()
    address, _ = await central.scan(NAME)
    await central.connect(address, exchange_mtu=exchange_mtu, supervision_timeout_ms=supervision_timeout_ms)
    return central


class _RawRequest:
    """A request sent as these bytes: Bumble's own PDUs re-encode a 128-bit form of a 16-bit UUID in 16 bits
    (UUID.from_bytes hands back the registered 16-bit UUID)."""

    def __init__(self, pdu: bytes):
        from bumble import att

        parsed = att.ATT_PDU.from_bytes(pdu)
        self.name, self.op_code, self._pdu = parsed.name, parsed.op_code, pdu

    def __bytes__(self) -> bytes:
        return self._pdu


async def att_request(central, request):
    """Send one ATT request (a Bumble PDU, or bytes sent as they are) and return the board's answer: the
    response PDU or an ATT_Error_Response (its request_opcode_in_error, attribute_handle_in_error and
    error_code tell)."""
    if isinstance(request, bytes):
        request = _RawRequest(request)
    return await asyncio.wait_for(central.peer.gatt_client.send_request(request), 10)


async def att_command(central, command):
    """Send one ATT command (no answer comes)."""
    await central.peer.gatt_client.send_command(command)


async def att_raw(central, pdu: bytes):
    """Send bytes on the ATT channel, whatever they hold."""
    from bumble import att

    central.connection.send_l2cap_pdu(att.ATT_CID, pdu)


def write_once(board, *values):
    """A central connects, writes each of `values` to CHAR (with response) and leaves."""
    async def scenario():
        central = await connect(board)
        try:
            for data in values:
                await central.characteristic(CHAR).write_value(data, with_response=True)
        finally:
            await central.__aexit__(None, None, None)

    asyncio.run(scenario())


def wait_board(board, expr, expected, timeout=5.0):
    """`expr`'s repr on the board once it equals `expected`; the failure shows the last value seen."""
    seen = []

    def matches() -> bool:
        seen.append(board_value(board, expr))
        return seen[-1] == expected

    wait_until(matches, timeout, interval=0.05, what=f"{expr} == {expected} on the board",
               detail=lambda: f"last value: {seen[-1]}")
    return seen[-1]
