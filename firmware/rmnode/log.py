"""One-line log output in ESP-IDF's shape: `I (uptime_ms) tag: message`; the uptime clock it stamps
lines with (`ticks_ms`/`ticks_diff`, for every timeout in the node too) and how bytes from outside
appear in a line (`shown`).

Never pass secret keys, PoPs, private keys or Wi-Fi passphrases to these functions.

`sink`, when set, is offered each line first: the BLE transport holds the lines its IRQ handler logs and
prints them from the main task (rmnode.ble, docs/protocol.md 1.2: printing more than 20 characters
releases the GIL on an ESP32). Kept that small here: this module is loaded in every phase.
"""

import time

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

# public: tests and the REPL set `log.level = log.ERROR` (or DEBUG); as const()s they cost no heap
# wherever this module uses them, only their entries in the module's globals
DEBUG = const(4)
INFO = const(3)
WARNING = const(2)
ERROR = const(1)

level = INFO

# Milliseconds that wrap on MicroPython (compare them with ticks_diff only); CPython, which runs the
# unit tests, gets a monotonic clock. Here because every module imports log: no module of its own.
if hasattr(time, "ticks_ms"):
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
else:
    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

_t0 = ticks_ms()
sink = None  # callable(line) -> True when it took the line (None: the line could not be formatted)


def shown(value):
    """Bytes from outside (an SSID) for a log line: the text when it is UTF-8, else its hex. Never raises:
    an SSID need not be text, and a log line must not be what fails."""
    try:
        return str(bytes(value), "utf-8")
    except (UnicodeError, ValueError):
        from binascii import hexlify  # built in: importing it costs nothing, a global here would

        return hexlify(bytes(value)).decode()


def _emit(severity, tag, msg):
    if severity <= level:
        try:
            line = "%s (%d) %s: %s" % ("?EWID"[severity], ticks_diff(ticks_ms(), _t0), tag, msg)
        except MemoryError:
            line = None
        if sink is not None and sink(line):
            return
        # a log line must never be what takes the node down; say so without allocating
        print(line if line is not None else "log: line dropped (out of memory)")


def debug(tag, msg):
    _emit(DEBUG, tag, msg)


def info(tag, msg):
    _emit(INFO, tag, msg)


def warning(tag, msg):
    _emit(WARNING, tag, msg)


def error(tag, msg):
    _emit(ERROR, tag, msg)
