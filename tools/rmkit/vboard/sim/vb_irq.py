# The BLE IRQ context of the virtual board: which thread runs a bluetooth IRQ handler right now, and
# the one console line that reports what a handler did there that an ESP32 could not survive.
#
# On an ESP32 the handler runs on the NimBLE host task, which is not a MicroPython thread: it takes
# the GIL and locks the scheduler for the handler's whole run (extmod/modbluetooth.c
# invoke_irq_handler, v1.26.1), and a garbage collection by the main task never scans its stack
# (ports/esp32/gccollect.c, mpthreadport.c mp_thread_gc_others; v1.26.1). If the handler releases the GIL
# and blocks, the main task runs and may collect what only the handler's C stack refers to (its
# locals; any frame bigger than 11 words lives on the GC heap, py/objfun.c VM_MAX_STATE_ON_STACK):
# silent heap corruption on a board. The unix port has no GIL and scans every thread, so nothing
# goes wrong here; the simulated modules call released_gil() where the ESP32 port would block
# without the GIL, and the board says so, deterministically.
#
# FAULT_PREFIX is what the host (rmkit/vboard/supervisor.py) recognises in the board's output.
# Imported by the simulated modules before any of them is installed under its board name.
import sys
import _thread

FAULT_PREFIX = "vboard FAULT: "

_handler_thread = [None]  # ident of the thread running an IRQ handler now, or None
_reported = set()  # kinds of operation already reported this boot: one line each, never a flood


def enter():
    _handler_thread[0] = _thread.get_ident()


def leave():
    _handler_thread[0] = None


def in_handler():
    """True in the thread running a BLE IRQ handler, while it runs."""
    running = _handler_thread[0]
    return running is not None and running == _thread.get_ident()


def released_gil(call, source):
    """Report that the handler running now releases the GIL and blocks in `call` (e.g.
    "time.sleep_ms(20)"), as `source` (a MicroPython file) shows; once per kind of call per boot.
    Does nothing outside a handler. The board carries on: on an ESP32 the damage is silent."""
    running = _handler_thread[0]  # in_handler(), inline: a handler's stack is small (vb_bluetooth)
    if running is None or running != _thread.get_ident():
        return
    kind = call.split("(")[0]
    if kind in _reported:
        return
    _reported.add(kind)
    # one write: the handler's thread prints in parallel with the main thread here, and the host
    # must see the line whole
    sys.stdout.write(FAULT_PREFIX + "BLE IRQ handler released the GIL in " + call
                     + ": on an ESP32 the main task can now collect garbage the handler still uses ("
                     + source + ")\n")
