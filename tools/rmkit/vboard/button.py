"""The virtual board's BOOT button (GPIO0), pressed from the host: by VirtualBoard.press_button and by
`rmkit vboard-button`, which finds a running board's state directory in its runtime record.

A DevKit's BOOT button pulls GPIO0 low while held (an external pull-up keeps it high otherwise). The
level lives in the board's state directory, `gpio0` ("0" held, "1" released), so a board that boots
while it is held reads it; each change is also written to the FIFO `gpio0.fifo`, which the board's
machine.Pin(0) reads (sim/vb_machine.py) to raise its IRQ. The button is not wired to the strapping logic:
download mode comes from the serial adapter's lines or VirtualBoard.enter_download_mode().
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

LEVEL_FILE = "gpio0"
FIFO = "gpio0.fifo"


def prepare(state_dir: Path) -> None:
    """At board start: the button released, and the FIFO the board's GPIO0 reads."""
    set_level_file(state_dir, pressed=False)
    os.mkfifo(state_dir / FIFO)


def set_level_file(state_dir: Path, pressed: bool) -> None:
    tmp = state_dir / (LEVEL_FILE + ".tmp")
    tmp.write_text("0" if pressed else "1")
    os.replace(tmp, state_dir / LEVEL_FILE)


def set_button(state_dir: Path, pressed: bool) -> bool:
    """Press (GPIO0 low) or release the button; True if a running MicroPython process saw the edge now
    (False: none reads GPIO0 at the moment, rebooting or never having made Pin(0); it reads the level
    when it does)."""
    set_level_file(state_dir, pressed)
    try:
        fd = os.open(state_dir / FIFO, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):  # no reader, or no board
            log.debug("vboard button: nobody reads GPIO0 now (%s)", exc.strerror)
            return False
        raise
    try:
        os.write(fd, b"0" if pressed else b"1")
    finally:
        os.close(fd)
    return True
