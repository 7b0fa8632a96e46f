"""One-line log output in ESP-IDF's shape: `I (uptime_ms) tag: message`; the uptime clock it stamps
lines with (`ticks_ms`/`ticks_diff`, for every timeout in the node too) and how bytes from outside
appear in a line (`shown`).

Never pass secret keys, PoPs, private keys or Wi-Fi passphrases to these functions.

Lines logged inside a BLE IRQ handler are held (`hold`/`unhold`) and printed later by the main task
(`flush`): on an ESP32 printing more than 20 characters releases the GIL (ports/esp32/mphalport.c
mp_hal_stdout_tx_strn, MICROPY_PY_STRING_TX_GIL_THRESHOLD in mpconfigport.h, v1.24-v1.26) and blocks on
the UART, so the main task would run and could collect garbage the handler, on the NimBLE task whose
stack the collector never scans, still uses (docs/protocol.md 1.2).
"""

import time

try:
    from _thread import get_ident
except ImportError:  # a port without threads runs no IRQ handler on another task
    def get_ident():
        return 0

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

# Held lines: a ring the handler's thread fills and the main task empties (one writer, one reader, so no
# lock: the unix port runs both at once). Allocated once; lines beyond it are counted, not kept.
_HELD_MAX = const(12)
_held = [None] * _HELD_MAX
_held_in = 0    # lines written by the holder so far (the holder alone moves it)
_held_out = 0   # lines printed by flush() so far (flush alone moves it)
_held_lost = 0
_holder = None  # the thread whose lines are held, while it holds


def hold():
    """From now on, lines this thread logs are held until `unhold`, for `flush` to print."""
    global _holder
    _holder = get_ident()


def unhold():
    global _holder
    _holder = None


def flush():
    """Print the held lines (main task). Returns how many it printed."""
    global _held_out, _held_lost
    printed = 0
    while _held_out != _held_in:
        slot = _held_out % _HELD_MAX
        line, _held[slot] = _held[slot], None
        _held_out += 1
        if line is not None:
            print(line)
            printed += 1
    if _held_lost:
        lost, _held_lost = _held_lost, 0
        print("log: %d lines dropped while held" % lost)
    return printed


def shown(value):
    """Bytes from outside (an SSID) for a log line: the text when it is UTF-8, else its hex. Never raises:
    an SSID need not be text, and a log line must not be what fails."""
    try:
        return str(bytes(value), "utf-8")
    except (UnicodeError, ValueError):
        from binascii import hexlify  # built in: importing it costs nothing, a global here would

        return hexlify(bytes(value)).decode()


def _emit(severity, tag, msg):
    global _held_in, _held_lost
    if severity <= level:
        try:
            line = "%s (%d) %s: %s" % ("?EWID"[severity], ticks_diff(ticks_ms(), _t0), tag, msg)
        except MemoryError:
            line = None
        if _holder is not None and _holder == get_ident():
            if _held_in - _held_out >= _HELD_MAX or line is None:
                _held_lost += 1
            else:
                _held[_held_in % _HELD_MAX] = line
                _held_in += 1
        elif line is None:
            # a log line must never be what takes the node down; say so without allocating
            print("log: line dropped (out of memory)")
        else:
            print(line)


def debug(tag, msg):
    _emit(DEBUG, tag, msg)


def info(tag, msg):
    _emit(INFO, tag, msg)


def warning(tag, msg):
    _emit(WARNING, tag, msg)


def error(tag, msg):
    _emit(ERROR, tag, msg)
