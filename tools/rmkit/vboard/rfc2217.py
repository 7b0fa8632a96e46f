"""The virtual board's serial port as an RFC 2217 server (`rfc2217://127.0.0.1:PORT`): the serial
port over telnet, with its line settings and modem lines, so esptool can reset the board into
download mode by DTR/RTS as it does through a USB-serial adapter (a pty has no modem lines).

pyserial's serial.rfc2217.PortManager speaks the protocol; it drives a serial port object, which
here is `Lines`: it keeps the settings the client asks for (baud rate and so on mean nothing on a
virtual wire) and hands DTR/RTS changes to the board. Everything runs on the supervisor's I/O thread.
"""

from __future__ import annotations

import logging
import socket
from typing import Callable

from serial import rfc2217

log = logging.getLogger(__name__)
IAC = 0xFF


class Lines:
    """The "serial port" PortManager drives: settings are kept, DTR/RTS go to `on_lines(dtr, rts)`."""

    def __init__(self, on_lines: Callable[..., None]):
        self._on_lines = on_lines
        self.baudrate = 115200
        self.bytesize = 8
        self.parity = "N"
        self.stopbits = 1
        self.xonxoff = False
        self.rtscts = False
        self.break_condition = False
        self._dtr = False
        self._rts = False
        # inputs of the adapter: nothing drives them
        self.cts = self.dsr = self.ri = self.cd = False

    @property
    def dtr(self) -> bool:
        return self._dtr

    @dtr.setter
    def dtr(self, value) -> None:
        self._dtr = bool(value)
        self._on_lines(dtr=self._dtr)

    @property
    def rts(self) -> bool:
        return self._rts

    @rts.setter
    def rts(self, value) -> None:
        self._rts = bool(value)
        self._on_lines(rts=self._rts)

    def reset_input_buffer(self) -> None:
        pass   # bytes from the board are never held back here

    def reset_output_buffer(self) -> None:
        pass


class _Connection:
    def __init__(self, sock: socket.socket):
        self.sock = sock

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)


class Rfc2217Client:
    """One RFC 2217 connection: decode() turns what the client sent into serial data (handling telnet
    and RFC 2217 commands on the way), encode() makes serial data safe to send."""

    def __init__(self, sock: socket.socket, on_lines: Callable[..., None]):
        self.sock = sock
        self.lines = Lines(on_lines)
        self.manager = rfc2217.PortManager(self.lines, _Connection(sock))

    def decode(self, data: bytes) -> bytes:
        # PortManager.filter() works a byte at a time; flash images are megabytes, so plain runs of
        # data (no IAC) skip it while it is between commands
        manager = self.manager
        out = bytearray()
        pos, end = 0, len(data)
        while pos < end:
            if manager.mode == rfc2217.M_NORMAL and manager.suboption is None:
                nxt = data.find(IAC, pos)
                if nxt < 0:
                    out += data[pos:]
                    break
                out += data[pos:nxt]
                pos = nxt
            for byte in manager.filter(data[pos:pos + 1]):
                out += byte
            pos += 1
        return bytes(out)

    @staticmethod
    def encode(data: bytes) -> bytes:
        return data.replace(b"\xff", b"\xff\xff")
