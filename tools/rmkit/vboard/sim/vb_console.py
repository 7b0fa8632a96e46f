# The virtual board's console as a BLE IRQ handler (vb_irq) meets it: print() and sys.stdout/stderr.
# The ESP32 port writes each piece of console output with mp_hal_stdout_tx_strn, which releases the
# GIL around the UART or USB write when the piece is longer than MICROPY_PY_STRING_TX_GIL_THRESHOLD,
# 20 bytes (ports/esp32/mphalport.c, ports/esp32/mpconfigport.h; v1.26.1), and that write may block.
# A piece is what is written at once: print() writes each argument's text, the separator and the end
# separately (py/modbuiltins.c; a str, a number or an object's __str__ in one piece, the repr of bytes
# and containers a character or an item at a time), and text streams split every piece at "\n"
# (mp_hal_stdout_tx_strn_cooked, shared/runtime/stdout_helpers.c); sys.stdout.buffer does not.
# The checks cost one test outside a handler, and in a handler few frames: the handler's stack is as
# small as a board's (vb_bluetooth).
import builtins
import io
import sys  # the unix port's: imported before vb_sys is installed as `sys`

import vb_irq

_THRESHOLD = 20
_SOURCE = "ports/esp32/mphalport.c"
_NO_TEXT_PIECE = (bytes, bytearray, memoryview, list, tuple, dict, set)
_print = builtins.print


def _longest_line(text):
    """Bytes in the longest line of `text` (str or a buffer), as the ESP32 port would write them."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    longest = 0
    for line in data.split(b"\n"):
        if len(line) > longest:
            longest = len(line)
    return longest


def _checked_print(*args, sep=" ", end="\n", file=None):
    if file is not None:
        return _print(*args, sep=sep, end=end, file=file)  # a file, or a stream Console checks
    if vb_irq.in_handler():
        longest = max(_longest_line(sep), _longest_line(end))
        for arg in args:
            if not isinstance(arg, _NO_TEXT_PIECE):
                longest = max(longest, _longest_line(arg if isinstance(arg, str) else str(arg)))
        if longest > _THRESHOLD:
            vb_irq.released_gil("print() of %d bytes" % longest, _SOURCE)
    return _print(*args, sep=sep, end=end)


class Console(io.IOBase):
    """A console stream (the unix port's stdout or stderr, or its .buffer) that reports a piece longer
    than 20 bytes written by a BLE IRQ handler; `call` names the firmware's call in the report."""

    def __init__(self, stream, call, cooked=True):
        self._stream = stream
        self._call = call
        self._cooked = cooked
        if cooked:
            self.buffer = Console(stream.buffer, call.replace(".write", ".buffer.write"), cooked=False)

    def write(self, data, *length):  # write(buf, n) as streams take it (mpremote's mount does)
        if vb_irq.in_handler():
            if length:
                data = data[:length[0]]
            size = _longest_line(data) if self._cooked else len(data)
            if size > _THRESHOLD:
                vb_irq.released_gil("%s of %d bytes" % (self._call, size), _SOURCE)
        return self._stream.write(data, *length)

    def ioctl(self, request, arg):
        return 0

    def __getattr__(self, name):  # read, readinto, flush, ... as the unix port's stream has them
        return getattr(self._stream, name)


stdout = Console(sys.stdout, "sys.stdout.write()")
stderr = Console(sys.stderr, "sys.stderr.write()")
builtins.print = _checked_print
