"""Waiting for a board's firmware to start the node, or finding out at once that it will not.

A board whose main.py fails does not always crash: an exception at import time (a MemoryError in a
heap too small, for one) ends main.py and leaves MicroPython at its REPL, and the node's own
"node stopped on an unexpected error" reboots it into the same failure again. Either says so on the
serial log within a second of booting, so a caller waiting for the node's first state reads it there
instead of waiting out its timeout, and reports the board's last error in one line.
"""

from __future__ import annotations

import re
from typing import Optional

from rmkit.vboard.errors import BoardError

# MicroPython's banner: printed when main.py has ended (or there is none), as on an ESP32
AT_THE_REPL = re.escape('Type "help()" for more information.')
# firmware/main.py's line before it prints the exception and resets the board
NODE_STOPPED = re.escape("node stopped on an unexpected error")
# the last line of a MicroPython traceback: `MemoryError: memory allocation failed, allocating 1024 bytes`
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b[^\r\n]*)", re.MULTILINE)
ERROR_AFTER_STOP_S = 5.0


class NodeDidNotStart(BoardError):
    """The firmware did not reach the node state waited for; str() is one line with the board's last error."""

    def __init__(self, message: str, error: Optional[str] = None):
        super().__init__(message)
        self.error = error  # the board's last exception line, when it printed one


def last_error(text: str) -> Optional[str]:
    """The last exception line in serial output, or None."""
    found = EXCEPTION_LINE.findall(text.replace("\r\n", "\n"))
    return found[-1].strip() if found else None


def wait_for_node(board, state: str = r"state: provisioning", timeout: float = 30.0, since: int = 0) -> None:
    """Return once the node logs `state` (a regex) after log offset `since`; raise NodeDidNotStart as soon
    as the firmware stopped at the REPL, stopped on an error, or the board crashed or halted."""
    pattern = re.compile(f"{state}|(?P<repl>{AT_THE_REPL})|(?P<stopped>{NODE_STOPPED})")
    where = f"(serial log: {board.serial_log})"
    try:
        match = board.wait_for_log(pattern, timeout=timeout, since=since)
    except BoardError as exc:  # crashed, halted, or the timeout: its first line, without the log tail
        first = str(exc).splitlines()[0]
        raise NodeDidNotStart(f"{first} {where}", last_error(board.read_log(since))) from None
    if match.group("repl"):
        error = last_error(board.read_log(since)[:match.start() - since])
        if error is None and not board.read_log(since).count("rmnode "):
            raise NodeDidNotStart(f"board {board.name}: no firmware ran (no main.py on its flash?); it waits at "
                                  f"its REPL {where}")
        raise NodeDidNotStart(f"board {board.name}: the firmware stopped at boot and waits at the REPL: "
                              f"{error or 'no error printed'} {where}", error)
    if match.group("stopped"):
        try:
            board.wait_for_log(EXCEPTION_LINE, timeout=ERROR_AFTER_STOP_S, since=match.end())
        except BoardError:
            pass
        error = last_error(board.read_log(match.end()))
        raise NodeDidNotStart(f"board {board.name}: the node stopped on an unexpected error at boot: "
                              f"{error or 'no error printed'} {where}", error)
