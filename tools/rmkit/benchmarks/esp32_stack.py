"""Run firmware code on the unix port with no more C stack than an ESP32 gives MicroPython.

An ESP32 runs MicroPython in a 16 KiB task and lets Python use 15 KiB of it (ports/esp32
MICROPY_TASK_STACK_SIZE, mp_stack_set_limit in main.c); the unix port allows ~80 KB. A thread with
that much usable stack (the unix port keeps 8 KiB of every thread's stack as a margin, and gives a
thread at least 8 KiB usable) makes a code path deeper than a board allows fail with
"RuntimeError: maximum recursion depth exceeded". 64-bit frames are bigger than the ESP32's, so this
is, if anything, stricter. Import (compile) modules before: a board runs .mpy, without the compiler.
"""

import os
import sys

ESP32_STACK_BUDGET = int(os.getenv("FW_STACK_BUDGET") or 15 * 1024)
_UNIX_THREAD_MARGIN = 8 * 1024
_PAD = int(os.getenv("FW_STACK_PAD") or 0)


def run(function, *args):
    """function(*args) on an ESP32-sized stack; returns its result, re-raises SystemExit's code as
    SystemExit here (a thread cannot end the process). CPython: calls it directly."""
    if sys.implementation.name != "micropython":
        return function(*args)
    import _thread
    import micropython
    import time

    outcome = []

    def padded(depth_bytes):
        # burn stack first (FW_STACK_PAD bytes): how much can be taken away before the function
        # fails tells how deep it goes (rmkit bench bisects it)
        if micropython.stack_use() < depth_bytes:
            return padded(depth_bytes)
        return function(*args)

    def body():
        try:
            outcome.append(("ok", padded(_PAD) if _PAD else function(*args)))
        except SystemExit as e:
            outcome.append(("exit", e.args[0] if e.args else 0))
        except BaseException as e:  # noqa: B036 - reported by the caller's thread
            sys.print_exception(e)
            outcome.append(("exit", 1))

    _thread.stack_size(ESP32_STACK_BUDGET + _UNIX_THREAD_MARGIN)
    _thread.start_new_thread(body, ())
    while not outcome:
        time.sleep_ms(5)
    kind, value = outcome[0]
    if kind == "exit":
        raise SystemExit(value)
    return value
