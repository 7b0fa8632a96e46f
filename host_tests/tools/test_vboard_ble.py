"""The virtual board's Bluetooth LE (sim/vb_bluetooth.py on the board, rmkit.vboard.ble_radio's
Bumble stack on the host) behaves as MicroPython's BLE on an ESP32 where firmware can tell, and a
Bumble central reaches it with real ATT/GATT (MTU exchange, discovery, long reads, prepared writes):

- a central's write longer than the attribute buffer (20 bytes) is silently truncated, unless
  gatts_set_buffer() enlarged it;
- the MTU stays 23 until config(mtu=N), and the exchange raises _IRQ_MTU_EXCHANGED;
- reads go through _IRQ_GATTS_READ_REQUEST, whose return value can refuse them;
- an exception escaping the IRQ handler drops it;
- a central that vanishes without disconnecting is dropped at its link's supervision timeout.
What the IRQ handler must not do, and its stack: test_vboard_irq.py. What the ATT server answers:
test_vboard_ble_att.py."""

import asyncio
import logging
import re

import pytest

from support.vboard_ble import CHAR, NAME, board_value, connect, peripheral, wait_board

pytestmark = pytest.mark.board  # tier: virtual boards (support/tiers.py)

CONNECTION_TIMEOUT = 0x08  # HCI error code (Bluetooth Core, Vol 1, Part F, 2.8): the supervision timeout
BUMBLE_SUPERVISION_TIMEOUT_S = 0.72  # what a Bumble central asks for (bumble/device.py)


def test_long_write_is_truncated_to_the_20_byte_buffer_without_gatts_set_buffer(vboard):
    peripheral(vboard)

    async def scenario():
        central = await connect(vboard)
        try:
            assert central.connection.att_mtu == 23
            # 100 bytes at MTU 23: a prepared (long) write, assembled by the stack, then truncated
            await central.characteristic(CHAR).write_value(b"A" * 100, with_response=True)
            assert wait_board(vboard, "len(ble.gatts_read(value_h))", "20") == "20"
            assert await central.characteristic(CHAR).read_value() == b"A" * 20
        finally:
            await central.__aexit__(None, None, None)

    asyncio.run(scenario())
    assert ("write", vboard.radio.events[-3][1], 100, 20) in vboard.radio.events
    assert "(3, 1, " in board_value(vboard, "events")


def test_gatts_set_buffer_takes_the_whole_long_write(vboard):
    peripheral(vboard, extra="ble.gatts_set_buffer(value_h, 300)")

    async def scenario():
        central = await connect(vboard)
        try:
            await central.characteristic(CHAR).write_value(bytes(range(256)) + b"xyz", with_response=True)
            assert wait_board(vboard, "len(ble.gatts_read(value_h))", "259") == "259"
            assert board_value(vboard, "ble.gatts_read(value_h)[-3:]") == "b'xyz'"
        finally:
            await central.__aexit__(None, None, None)

    asyncio.run(scenario())


def test_mtu_is_23_until_config_mtu_then_the_exchange_settles_and_raises_the_irq(vboard):
    peripheral(vboard)
    assert board_value(vboard, "ble.config('mtu')") == "23"

    async def exchange():
        central = await connect(vboard)
        try:
            return central.connection.att_mtu
        finally:
            await central.__aexit__(None, None, None)

    assert asyncio.run(exchange()) == 23
    # as on a board, advertising stopped when the central connected
    vboard.exec("ble.config(mtu=256); events.clear(); ble.gap_advertise(100000)")
    assert asyncio.run(exchange()) == 256
    assert wait_board(vboard, "[e for e in events if e[0] == 21]", "[(21, 1, 256)]") == "[(21, 1, 256)]"


def test_long_read_of_a_value_longer_than_the_mtu_and_read_requests_reach_the_board(vboard):
    peripheral(vboard, extra="ble.gatts_write(value_h, bytes(range(200)) * 2)")

    async def scenario():
        central = await connect(vboard)  # MTU 23: Read Request, then Read Blob Requests
        try:
            assert await central.characteristic(CHAR).read_value() == bytes(range(200)) * 2
            descriptor = central.characteristic(CHAR).descriptors[0]
            assert await descriptor.read_value() == b"prov-session"
        finally:
            await central.__aexit__(None, None, None)

    asyncio.run(scenario())
    reads = re.findall(r"\(4, 1, \d+\)", board_value(vboard, "events"))
    assert len(reads) >= 400 // 22 + 1  # one IRQ per ATT read, as NimBLE's access callback


def test_a_read_request_the_handler_refuses_is_an_att_error(vboard):
    from bumble.att import ATT_Error

    peripheral(vboard, extra="deny[0] = 0x02  # read not permitted")

    async def scenario():
        central = await connect(vboard)
        try:
            with pytest.raises(ATT_Error) as error:
                await central.characteristic(CHAR).read_value()
            assert error.value.error_code == 0x02
        finally:
            await central.__aexit__(None, None, None)

    asyncio.run(scenario())


def test_bluetooth_api_refuses_calls_while_inactive_and_reports_the_esp32_bt_mac(vboard):
    out = vboard.exec("""
import bluetooth

ble = bluetooth.BLE()
try:
    ble.config('mac')
except OSError as e:
    print('EPERM', e.errno)
ble.active(True)
print(ble.config('mac')[1].hex(), ble.active())""")
    assert "EPERM 1" in out
    mac = int(vboard.mac.replace(":", ""), 16) + 2
    assert f"{mac:012x}" in out


def test_a_board_reset_drops_the_central_and_clears_the_gatt_database(vboard):
    peripheral(vboard)

    async def scenario():
        central = await connect(vboard)
        try:
            gone = asyncio.get_running_loop().create_future()
            central.connection.on("disconnection", lambda reason: gone.done() or gone.set_result(reason))
            await asyncio.get_running_loop().run_in_executor(None, vboard.reset)
            await asyncio.wait_for(gone, 5)
            with pytest.raises(asyncio.TimeoutError):
                await central.scan(NAME, timeout=0.5)  # nothing advertises after the reset
        finally:
            await central.__aexit__(None, None, None)

    asyncio.run(scenario())


def test_an_exception_in_the_irq_handler_drops_the_handler_as_on_a_board(vboard):
    """MicroPython prints it and sets the handler to None (extmod/modbluetooth.c): later events are lost."""
    peripheral(vboard, extra="""
def irq2(event, data):
    events.append(event)
    if event == 3:
        raise ValueError("bug")
ble.irq(irq2)""")

    async def scenario():
        central = await connect(vboard)
        try:
            for data in (b"one", b"two"):
                await central.characteristic(CHAR).write_value(data, with_response=True)
        finally:
            await central.__aexit__(None, None, None)

    asyncio.run(scenario())
    log = vboard.read_log()
    assert "Unhandled exception in IRQ callback handler" in log and "ValueError: bug" in log
    # connect, MTU exchange, the first write (which raised); nothing after it: not the second write, nor the
    # disconnect
    assert wait_board(vboard, "events", "[1, 21, 3]") == "[1, 21, 3]"
    assert board_value(vboard, "ble.gatts_read(value_h)") == "b'two'"  # the stack itself carried on


def lost_and_dropped(radio, since):
    """The radio's ("lost", handle, timeout_s) and then ("disconnect", handle, reason) events."""
    lost = radio.wait_for_event(lambda e: e[0] == "lost", 10, since)
    dropped = radio.wait_for_event(lambda e: e[0] == "disconnect", lost[2] + 10, since)
    return lost, dropped


def test_a_central_that_vanishes_is_dropped_at_its_supervision_timeout(vboard):
    """A central whose host goes away without a word (its HCI connection closes, no LL_TERMINATE_IND): the
    board's controller keeps the link for the supervision timeout the central asked for, then the board
    gets _IRQ_CENTRAL_DISCONNECT, the connection timed out (0x08)."""
    peripheral(vboard)
    since = len(vboard.radio.events)

    async def scenario():
        central = await connect(vboard)
        await central.vanish()

    asyncio.run(scenario())
    lost, dropped = lost_and_dropped(vboard.radio, since)
    assert lost[2] == pytest.approx(BUMBLE_SUPERVISION_TIMEOUT_S)
    assert dropped[1:] == (lost[1], CONNECTION_TIMEOUT)
    assert dropped.at - lost.at >= lost[2]
    assert wait_board(vboard, "[e[0] for e in events if e[0] in (1, 2)]", "[1, 2]") == "[1, 2]"


def test_the_supervision_timeout_is_the_centrals_and_a_controller_reset_ends_the_link(vboard):
    """HCI Reset ends a controller's links without a word too (Bluetooth Core, Vol 4, Part E, 7.3.2); the
    link lasts the 2.5 s this central asked for in its CONNECT_IND."""
    from bumble import hci

    peripheral(vboard)
    since = len(vboard.radio.events)

    async def scenario():
        central = await connect(vboard, supervision_timeout_ms=2500)
        try:
            await central.device.host.send_command(hci.HCI_Reset_Command())
            central.connection = None  # its controller forgot it
        finally:
            await central.__aexit__(None, None, None)

    asyncio.run(scenario())
    lost, dropped = lost_and_dropped(vboard.radio, since)
    assert lost[2] == pytest.approx(2.5)
    assert dropped[2] == CONNECTION_TIMEOUT
    assert dropped.at - lost.at >= 2.5


def test_the_boards_own_disconnect_or_stop_reaches_a_vanished_central_quietly(vboard, caplog):
    """While the board still holds the link of a central that is gone, its stack disconnects it (the node's
    idle watch does) and later stops (Ctrl-C): its LL_TERMINATE_IND is lost in the air, the board gets its
    _IRQ_CENTRAL_DISCONNECT at once, and nothing raises. Bumble's link raised InvalidArgumentError "Unable
    to find controller for address" into the radio's loop, and the disconnect never completed."""
    caplog.set_level(logging.WARNING)
    peripheral(vboard)
    radio, since = vboard.radio, len(vboard.radio.events)

    async def scenario():
        central = await connect(vboard, supervision_timeout_ms=30000)
        await central.vanish()

    asyncio.run(scenario())
    lost = radio.wait_for_event(lambda e: e[0] == "lost", 10, since)
    vboard.exec(f"ble.gap_disconnect({lost[1]})")
    dropped = radio.wait_for_event(lambda e: e[0] == "disconnect", 5, since)
    assert dropped[2] != CONNECTION_TIMEOUT  # the board's own disconnect, long before the timeout
    assert wait_board(vboard, "[e[0] for e in events if e[0] in (1, 2)]", "[1, 2]") == "[1, 2]"

    vboard.exec("ble.gap_advertise(100000)")
    since = len(radio.events)
    asyncio.run(scenario())  # another one vanishes, and the board is stopped while it holds that link
    radio.wait_for_event(lambda e: e[0] == "lost", 10, since)
    vboard.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or "Unable to find controller" in r.getMessage()]
    assert not errors, [r.getMessage() for r in errors]
