"""A minimal raw-REPL client over the board's TCP port (what VirtualBoard.exec() speaks).

Same byte protocol as mpremote's transport_serial.py and ampy's pyboard.py: Ctrl-C to interrupt
whatever runs, Ctrl-A for the raw REPL, code + Ctrl-D, then "OK", stdout, 0x04, stderr, 0x04, ">".
No soft reset: like `mpremote resume`, the board keeps its state between calls.
"""

import socket
import time
from typing import Callable

from rmkit.vboard.errors import BoardError

RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"


class RawRepl:
    def __init__(self, sock: socket.socket, check: Callable[[], None]):
        """`check` raises when the board crashed or rebooted meanwhile (so waits do not hang)."""
        self._sock = sock
        self._check = check
        self._buf = b""
        sock.settimeout(0.05)

    def _read_until(self, ending: bytes, deadline: float, what: str) -> bytes:
        while True:
            at = self._buf.find(ending)
            if at >= 0:
                data, self._buf = self._buf[:at], self._buf[at + len(ending):]
                return data
            self._check()
            if time.monotonic() > deadline:
                tail = self._buf[-300:].decode("utf-8", "replace")
                raise BoardError(f"timed out waiting for {what}; board printed: {tail!r}")
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise BoardError(f"board closed the connection while waiting for {what}")
            self._buf += chunk

    def enter(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._sock.sendall(b"\r\x03")
        time.sleep(0.01)
        self._drain()
        self._sock.sendall(b"\r\x01")
        self._read_until(RAW_PROMPT, deadline, "the raw REPL prompt")

    def _drain(self) -> None:
        try:
            while self._sock.recv(65536):
                pass
        except socket.timeout:
            pass
        self._buf = b""

    def run(self, code: str, timeout: float):
        """Run `code`; return (stdout, stderr) as text."""
        deadline = time.monotonic() + timeout
        self._sock.sendall(code.encode("utf-8") + b"\x04")
        reply = self._read_until(b"OK", deadline, "OK after the code")
        if reply.strip():
            raise BoardError(f"raw REPL refused the code: {reply.decode('utf-8', 'replace')!r}")
        out = self._read_until(b"\x04", deadline, "the end of the code's output")
        err = self._read_until(b"\x04", deadline, "the end of the code's error output")
        self._read_until(b">", deadline, "the raw REPL prompt")
        return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def leave(self) -> None:
        self._sock.sendall(b"\r\x02")  # back to the friendly REPL, as mpremote leaves it
