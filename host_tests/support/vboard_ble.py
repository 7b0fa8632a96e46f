"""A BLE peripheral on a virtual board for the tests of its Bluetooth LE (sim/vb_bluetooth.py): one
READ|WRITE characteristic with a 0x2901 descriptor, an IRQ handler that records every event, and a
Bumble central (rmkit.vboard.ble_central) that reaches it over the board's radio."""

import asyncio
import time

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
    deadline = time.monotonic() + timeout
    while True:
        value = board_value(board, expr)
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
