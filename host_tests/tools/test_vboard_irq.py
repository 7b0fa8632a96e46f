"""A BLE IRQ handler on the virtual board is held to what an ESP32 survives (sim/vb_irq.py):

- whatever would release the GIL and block on an ESP32 (a sleep longer than a FreeRTOS tick, console
  output longer than 20 bytes, a socket call, a wait in select or on a held lock, Wi-Fi connect) is a
  fault: one `vboard FAULT:` line per kind and boot, board.faults, BoardFault from wait_for_log; the
  board carries on, as a board would (its heap corruption is silent);
- what an ESP32 does with the GIL held (short prints, short sleeps, computing) is no fault;
- the handler's C stack is a board's: calls nest about as deep as on an ESP32 before RuntimeError.
The fixtures fail any test whose board faulted (test_harness.py); these make faults on purpose."""

import re

import pytest

from rmkit.vboard import BoardFault
from support.vboard_ble import board_value, peripheral, wait_board, write_once
from support.wait import wait_until

pytestmark = [pytest.mark.board_faults_expected, pytest.mark.board]  # tier: virtual boards (support/tiers.py)


def fault(call: str, source: str) -> str:
    """A fault's message as board.faults has it (the line after `vboard FAULT: `)."""
    return (f"BLE IRQ handler released the GIL in {call}: on an ESP32 the main task can now collect garbage "
            f"the handler still uses ({source})")


SLEEP_FAULT = fault("time.sleep_ms(20)", "ports/esp32/mphalport.c")


def test_a_handler_that_sleeps_is_a_fault_reported_once_and_the_board_carries_on(vboard):
    peripheral(vboard, extra="""
import time
def irq2(event, data):
    if event == 3:
        time.sleep_ms(20)
        events.append("slept")
ble.irq(irq2)""")
    since = vboard.log_offset()

    write_once(vboard, b"one", b"two")
    with pytest.raises(BoardFault) as raised:
        vboard.wait_for_log(r"printed by nobody", since=since, timeout=10)
    assert SLEEP_FAULT in str(raised.value)
    assert wait_board(vboard, "events", "['slept', 'slept']") == "['slept', 'slept']"  # it carried on
    assert vboard.faults == [SLEEP_FAULT]  # the same kind twice: one line
    assert vboard.read_log(since).count("vboard FAULT: ") == 1
    assert f"vboard FAULT: {SLEEP_FAULT}\r\n" in vboard.read_log(since)
    assert vboard.running and not vboard.crashes


def test_each_call_that_blocks_without_the_gil_on_an_esp32_is_a_fault(vboard):
    peripheral(vboard, extra="""
import time, sys, socket, select, network, _thread
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
discard = socket.getaddrinfo("127.0.0.1", 9)[0][-1]
idle = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
idle.bind(socket.getaddrinfo("127.0.0.1", 0)[0][-1])
poller = select.poll()
poller.register(idle, select.POLLIN)
wlan = network.WLAN(network.STA_IF)
wlan.active(True)
held = _thread.allocate_lock()
held.acquire()
def irq2(event, data):
    if event == 3:
        print("a line longer than twenty bytes")
        sys.stdout.write("another line, longer than twenty\\n")
        time.sleep(0.05)  # the fault under test: sleeping in the handler
        udp.sendto(b"x", discard)
        poller.poll(30)
        wlan.connect("nowhere", "secret123")
        held.acquire()  # waits until the main task (here: the test) releases it
        events.append("done")
ble.irq(irq2)""")

    write_once(vboard, b"go")
    wait_until(lambda: len(vboard.faults) == 7, timeout=10, what="seven faults")
    vboard.exec("held.release()")
    assert wait_board(vboard, "events", "['done']") == "['done']"
    assert vboard.faults == [
        fault("print() of 31 bytes", "ports/esp32/mphalport.c"),
        fault("sys.stdout.write() of 32 bytes", "ports/esp32/mphalport.c"),
        fault("time.sleep(0.05)", "ports/esp32/mphalport.c"),
        fault("socket.sendto()", "ports/esp32/modsocket.c"),
        fault("poll.poll(30)", "extmod/modselect.c"),
        fault("WLAN.connect()", "ports/esp32/network_wlan.c"),
        fault("lock.acquire()", "py/modthread.c"),
    ]


def test_what_an_esp32_does_holding_the_gil_is_no_fault(vboard):
    peripheral(vboard, extra="""
import time, select, _thread
lock = _thread.allocate_lock()
def irq2(event, data):
    if event == 3:
        print("twenty bytes exactly")
        print("a" * 15, "b" * 15)  # two pieces of 15 bytes and a separator, each written alone
        time.sleep_ms(10)  # a FreeRTOS tick or less: yields and busy-waits
        time.sleep_us(3000)  # busy-waits
        with lock:  # free: acquired without waiting
            pass
        select.poll().poll(0)
        events.append(sum(range(10000)))  # computing
        print("irq done")
ble.irq(irq2)""")
    since = vboard.log_offset()

    write_once(vboard, b"go")
    vboard.wait_for_log(r"irq done", since=since, timeout=10)  # raises BoardFault had one come first
    assert vboard.faults == []
    assert "twenty bytes exactly\r\n" + "a" * 15 + " " + "b" * 15 + "\r\n" in vboard.read_log(since)


def test_the_handler_has_the_c_stack_of_an_esp32s_ble_host_task(vboard):
    """On an ESP32 a handler has 4096 bytes of C stack for Python: a chain of about ten method calls (a
    board on v1.23 raised RuntimeError at its 11th). Here too, and what follows is what a board does: the
    exception is printed, the handler dropped."""
    peripheral(vboard, extra="""
depth = [0]
class Handler:
    def irq(self, event, data):
        events.append(event)
        if event == 3:
            self.down(1)
    def down(self, level):
        try:
            depth[0] = level
            self.down(level + 1)
        except KeyError:
            pass
ble.irq(Handler().irq)""")

    write_once(vboard, b"one", b"two")
    vboard.wait_for_log(r"RuntimeError: maximum recursion depth exceeded", timeout=10)
    frames = 1 + int(board_value(vboard, "depth[0]"))  # irq, then down at each level
    assert 8 <= frames <= 14, frames
    log = vboard.read_log()
    assert "Unhandled exception in IRQ callback handler" in log
    traceback = log[log.index("Traceback"):log.index("RuntimeError")]
    assert re.findall(r"in (\w+)", traceback) == ["irq"] + ["down"] * (frames - 1)  # the handler's, as on a board
    assert wait_board(vboard, "ble.gatts_read(value_h)", "b'two'") == "b'two'"  # the stack carried on
    assert board_value(vboard, "events") == "[1, 21, 3]"  # the handler did not: dropped after the first write


def test_a_handler_running_long_gets_a_warning_not_a_fault(vboard_factory, monkeypatch):
    """Computing in the handler is what ESP-IDF's protocomm does; only a handler long enough to risk a
    central's ATT timeout on a board is reported (here the threshold is lowered from 20 s to 1 s)."""
    monkeypatch.setenv("VBOARD_IRQ_SLOW_MS", "1000")
    vboard = vboard_factory()
    peripheral(vboard, extra="""
import time
def irq2(event, data):
    if event == 3:
        time.sleep_us(1200000)  # on an ESP32 a busy wait, holding the GIL
ble.irq(irq2)""")
    since = vboard.log_offset()

    write_once(vboard, b"go")
    vboard.wait_for_log(r"vb_bluetooth: IRQ handler \(event 3\) ran \d+ ms; a central's ATT "
                        r"transaction times out at 30 s", since=since, timeout=20)
    assert vboard.faults == []
