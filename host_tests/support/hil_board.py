"""A board under hardware-in-the-loop test, reached only through its serial port (host_tests/hil/).

A board has one UART, so its port has one user at a time, and that is this object:

- while the port is open, one reader thread takes every byte the board sends, appends it to the
  session's record (what wait_for_log searches) and to the current serial log file (a test's
  artifacts folder, set per test with log_to());
- REPL commands (exec, launch) write to the port and read their answers from that same record, so
  the serial log also shows what the harness asked and what the board answered;
- the steps that run mpremote or esptool (rmkit deploy, rmkit factory, rmkit flash) need the port
  for themselves: `with board.released():` stops the reader, closes the port, and opens it again
  afterwards.

The raw REPL is MicroPython's (Ctrl-C, Ctrl-A, code, Ctrl-D -> "OK", stdout, 0x04, stderr, 0x04,
">"), as mpremote and tools/rmkit/vboard/rawrepl.py speak it, here over pyserial. No soft reset:
like `mpremote resume`, a command interrupts what runs (the node's main.py) and leaves the board at
its REPL until the next reset.

Port names are whatever rmkit.serialport.open_port opens: /dev/ttyUSB0, rfc2217://HOST:PORT,
socket://HOST:PORT, a pty path. Opening never resets the board (DTR and RTS stay released).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

from rmkit.serialport import open_port

RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
# a reset has happened: the ROM's first line (an ESP32 on a USB-serial bridge; the virtual board prints
# the same), or the node's first line (boards on native USB lose the ROM's output while re-enumerating)
RESET_LINE = re.compile(r"rst:0x[0-9a-f]+ \(|node: rmnode \S+, node id")
CHUNK = 256        # raw-REPL code goes out in pieces a UART's receive buffer takes (as mpremote does)
REOPEN_S = 15.0    # a port that went away (native-USB boards re-enumerate on reset) is retried this long


class HilBoardError(Exception):
    pass


class HilBoard:
    def __init__(self, port: str, baudrate: int = 115200):
        self.port = port
        self.baudrate = baudrate
        self._conn = None
        self._reader: Optional[threading.Thread] = None
        self._stop_reading = threading.Event()
        self._cond = threading.Condition()
        self._record = bytearray()          # every byte since open(), for the whole session
        self._log = None                    # the current serial log file (binary, unbuffered)
        self._log_path: Optional[Path] = None
        self._command = threading.Lock()    # one REPL command at a time

    # -- the port ------------------------------------------------------------------------------------

    def open(self) -> "HilBoard":
        self._conn = open_port(self.port, baudrate=self.baudrate, timeout=0.05)
        self._stop_reading.clear()
        self._reader = threading.Thread(target=self._read_loop, name=f"hil serial {self.port}", daemon=True)
        self._reader.start()
        return self

    def close(self) -> None:
        self._stop_reading.set()
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @contextlib.contextmanager
    def released(self, why: str) -> Iterator[None]:
        """The port closed for another program (mpremote, esptool) for the duration, then opened again."""
        was_open = self.is_open
        self.close()
        self._note(f"port closed for {why}")
        try:
            yield
        finally:
            if was_open:
                self.open()
                self._note(f"port reopened after {why}")

    def _note(self, text: str) -> None:
        """A line of the harness's own in the serial log (not in the record wait_for_log searches)."""
        with self._cond:
            if self._log is not None:
                self._log.write(f"\n[hil {time.strftime('%H:%M:%S')}] {text}\n".encode())

    def _read_loop(self) -> None:
        import serial

        conn = self._conn
        while not self._stop_reading.is_set():
            try:
                data = conn.read(4096)
            except (serial.SerialException, OSError) as exc:
                conn = self._reopen(exc)
                if conn is None:
                    return
                continue
            if data:
                with self._cond:
                    self._record += data
                    if self._log is not None:
                        self._log.write(data)
                    self._cond.notify_all()

    def _reopen(self, exc: Exception):
        """The port went away (a board on native USB re-enumerates when it resets): open it again."""
        self._note(f"port lost ({exc}); reopening")
        try:
            self._conn.close()
        except Exception:
            pass
        deadline = time.monotonic() + REOPEN_S
        while not self._stop_reading.wait(0.2):
            try:
                self._conn = open_port(self.port, baudrate=self.baudrate, timeout=0.05)
                self._note("port reopened")
                return self._conn
            except Exception:
                if time.monotonic() > deadline:
                    self._note(f"port did not come back within {REOPEN_S:g} s")
                    return None
        return None

    # -- the serial log ------------------------------------------------------------------------------

    def log_to(self, path: Optional[Path]) -> None:
        """Write what the board sends into `path` from now on (None: stop writing a file)."""
        with self._cond:
            if self._log is not None:
                self._log.close()
            self._log = open(path, "ab", buffering=0) if path is not None else None
            self._log_path = path

    def log_offset(self) -> int:
        with self._cond:
            return len(self._record)

    def read_log(self, since: int = 0) -> str:
        with self._cond:
            return bytes(self._record[since:]).decode("utf-8", "replace")

    def wait_for_log(self, pattern: str, timeout: float = 15.0, since: int = 0) -> re.Match:
        """The first match of `pattern` in what the board sent after offset `since`; AssertionError
        with the log's tail when it does not come within `timeout` seconds."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = bytes(self._record[since:]).decode("utf-8", "replace")
                match = regex.search(text)
                if match:
                    return match
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = "\n".join(text.replace("\r\n", "\n").splitlines()[-20:])
                    raise AssertionError(f"board on {self.port} never logged {pattern!r} within {timeout:g} s; "
                                         f"serial log tail:\n{tail}")
                self._cond.wait(min(remaining, 0.5))

    # -- the raw REPL --------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._conn is None:
            raise HilBoardError(f"serial port {self.port} is not open")
        for at in range(0, len(data), CHUNK):
            self._conn.write(data[at:at + CHUNK])
            if len(data) > CHUNK:
                time.sleep(0.01)  # time passing on purpose: a board's UART buffer drains between chunks
        self._conn.flush()

    def _wait_bytes(self, marker: bytes, start: int, deadline: float, what: str) -> int:
        """Offset just after the first `marker` at or after `start` in the record."""
        with self._cond:
            while True:
                at = self._record.find(marker, start)
                if at >= 0:
                    return at + len(marker)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = bytes(self._record[start:][-300:]).decode("utf-8", "replace")
                    raise HilBoardError(f"board on {self.port}: timed out waiting for {what}; it sent: {tail!r}")
                self._cond.wait(min(remaining, 0.2))

    def _enter_raw_repl(self, timeout: float) -> int:
        """Interrupt whatever runs and get the raw REPL's prompt; returns the record offset after it.
        Ctrl-C and Ctrl-A are sent again every 2 s (a board busy in a blocking call, or still booting,
        may miss them)."""
        deadline = time.monotonic() + timeout
        while True:
            # time passing on purpose between the keys: each Ctrl-C must reach the board as its own
            # interrupt, also a board whose program catches the first; nothing on the wire says one arrived
            self._write(b"\r\x03")
            time.sleep(0.05)
            self._write(b"\x03")   # a second Ctrl-C, for a KeyboardInterrupt caught once
            time.sleep(0.1)
            start = self.log_offset()
            self._write(b"\r\x01")
            try:
                return self._wait_bytes(RAW_PROMPT, start, min(deadline, time.monotonic() + 2.0), "the raw REPL")
            except HilBoardError:
                if time.monotonic() >= deadline:
                    raise HilBoardError(f"board on {self.port} gave no raw REPL within {timeout:g} s "
                                        f"(is MicroPython running? serial log tail: "
                                        f"{self.read_log(max(0, self.log_offset() - 300))!r})") from None

    def _send_code(self, code: str, timeout: float) -> int:
        self._enter_raw_repl(timeout)
        start = self.log_offset()
        self._write(code.encode("utf-8") + b"\x04")
        after_ok = self._wait_bytes(b"OK", start, time.monotonic() + timeout, "OK after the code")
        refused = bytes(self._record[start:after_ok - 2]).strip()
        if refused:
            raise HilBoardError(f"raw REPL refused the code: {refused!r}")
        return after_ok

    def exec(self, code: str, timeout: float = 15.0) -> str:
        """Run `code` at the raw REPL and return what it printed; HilBoardError with the traceback
        when it raised. The board stays at its REPL (the node's main.py is interrupted)."""
        with self._command:
            deadline = time.monotonic() + timeout
            after_ok = self._send_code(code, timeout)
            end_out = self._wait_bytes(b"\x04", after_ok, deadline, "the end of the code's output")
            end_err = self._wait_bytes(b"\x04", end_out, deadline, "the end of the code's error output")
            self._wait_bytes(b">", end_err, deadline, "the raw REPL prompt")
            with self._cond:
                out = bytes(self._record[after_ok:end_out - 1]).decode("utf-8", "replace")
                err = bytes(self._record[end_out:end_err - 1]).decode("utf-8", "replace")
            self._write(b"\r\x02")  # back to the friendly REPL, as mpremote leaves a board
            if err.strip():
                raise HilBoardError(f"board on {self.port} raised:\n{err.strip()}")
            return out

    def launch(self, code: str, timeout: float = 15.0) -> int:
        """Start `code` at the raw REPL without waiting for it to end (it may reset the board, which
        ends the REPL session): returns the record offset from where its output follows."""
        with self._command:
            return self._send_code(code, timeout)

    # -- what every HIL step needs -------------------------------------------------------------------

    def reset(self, timeout: float = 15.0) -> int:
        """machine.reset() from the REPL; returns the record offset before it, once the board shows that
        it reset (then it runs boot.py and main.py)."""
        since = self.log_offset()
        self.launch("import machine\nmachine.reset()", timeout=timeout)
        self.wait_for_log(RESET_LINE.pattern, timeout=timeout, since=since)
        return since

    def mac(self) -> str:
        """The board's station MAC, aa:bb:cc:dd:ee:ff (what the firmware derives its default node id from)."""
        out = self.exec("import network, binascii\n"
                        "print(binascii.hexlify(network.WLAN(network.STA_IF).config('mac')).decode())")
        digits = out.strip().splitlines()[-1].strip() if out.strip() else ""
        if not re.fullmatch(r"[0-9a-f]{12}", digits):
            raise HilBoardError(f"board on {self.port} answered {out!r} when asked for its MAC")
        return ":".join(digits[i:i + 2] for i in range(0, 12, 2))

    def erase_state(self) -> None:
        """Forget Wi-Fi credentials and the pending mapping (/state.json and its temp file), leaving
        firmware, factory data and settings: after a reset the node serves provisioning again. Done at
        the REPL, without telling the cloud (the test's own factory reset does that)."""
        self.exec("import os\n"
                  "for p in ('/state.json', '/state.json.tmp'):\n"
                  "    try:\n"
                  "        os.remove(p)\n"
                  "    except OSError:\n"
                  "        pass\n")
