"""One-line log output in ESP-IDF's shape: `I (uptime_ms) tag: message`.

Never pass secret keys, PoPs, private keys or Wi-Fi passphrases to these functions.
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
_t0 = time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.time() * 1000)


def _emit(severity, tag, msg):
    if severity <= level:
        if hasattr(time, "ticks_ms"):
            uptime_ms = time.ticks_diff(time.ticks_ms(), _t0)
        else:  # CPython
            uptime_ms = int(time.time() * 1000) - _t0
        try:
            print("%s (%d) %s: %s" % ("?EWID"[severity], uptime_ms, tag, msg))
        except MemoryError:
            # a log line must never be what takes the node down; say so without allocating
            print("log: line dropped (out of memory)")


def debug(tag, msg):
    _emit(DEBUG, tag, msg)


def info(tag, msg):
    _emit(INFO, tag, msg)


def warning(tag, msg):
    _emit(WARNING, tag, msg)


def error(tag, msg):
    _emit(ERROR, tag, msg)
