"""`rmkit flash`: write a MicroPython firmware image to an ESP32 board with esptool.

esptool (requirements-dev.txt, through its Python API: esptool.main([...], esp=...)) resets the
board into download mode through DTR/RTS, uploads its flasher stub, writes the image compressed and
checks the MD5 of what is in flash against it, then resets the board (RTS) so it boots the new
firmware. Before that, this command checks what esptool would only find out half way: that the
port exists and can be opened, and that the image is a complete firmware file (bootloader,
partition table and app, every checksum and digest) and for which chip; the chip's offset comes
from espimage.CHIPS. Each way it can fail is one line (UserError).

A virtual board (`rmkit vboard`) is flashed the same way through its rfc2217:// URL. pyserial's
RFC 2217 client sends every port setting again, and waits at least 100 ms for the answers, each
time the read timeout changes, which esptool does around nearly every command (a small image took
25 s that way); a read timeout only matters on this side, so the port here keeps it local.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import re
import signal
import stat
import sys
from pathlib import Path

import serial
import serial.rfc2217

from rmkit import espimage
from rmkit.errors import UserError

DEFAULT_BAUD = 460800
ROM_BAUD = 115200
_WRONG_CHIP = re.compile(r"This chip is (\S+), not (\S+)\. Wrong chip argument\?")


class Rfc2217Port(serial.rfc2217.Serial):
    """pyserial's RFC 2217 client, except that a new read timeout is not sent to the server."""

    @property
    def timeout(self):
        return self._timeout

    @timeout.setter
    def timeout(self, value):
        if value is not None and value < 0:
            raise ValueError(f"Not a valid timeout: {value!r}")
        self._timeout = value


def serial_ports() -> list:
    return sorted(glob.glob("/dev/ttyUSB*") + glob.glob("/dev/ttyACM*"))


def check_port(port: str) -> None:
    """One line for a port esptool could not open: missing, not a serial device, no permission; or a
    virtual board's socket:// URL, which has no DTR/RTS to reset it into download mode."""
    if re.fullmatch(r"\d+", port):
        raise UserError(f"port {port} looks like a TCP port number: give the board's serial device "
                        f"(/dev/ttyUSB0) or a URL (a virtual board's rfc2217://127.0.0.1:{port})")
    if port.startswith("socket://"):
        from rmkit.vboard import runtime

        board = runtime.board_at_url(port)
        if board is not None:
            raise UserError(f"{port} is virtual board {board['name']}'s plain TCP port, which carries no DTR/RTS, so "
                            f"esptool cannot reset it into download mode: flash it at its RFC 2217 port, "
                            f"make flash PORT={board['rfc2217']}")
    if "://" in port:
        return   # a URL (rfc2217://, socket://): esptool finds out whether it answers
    try:
        mode = os.stat(port).st_mode
    except FileNotFoundError:
        present = ", ".join(serial_ports()) or "none"
        raise UserError(f"no such port {port}: is the board plugged in, with a data (not charge-only) "
                        f"cable? Serial ports present: {present}") from None
    except PermissionError:
        raise UserError(_permission_help(port)) from None
    if not stat.S_ISCHR(mode):
        raise UserError(f"{port} is not a serial device")
    if not os.access(port, os.R_OK | os.W_OK):
        raise UserError(_permission_help(port))


def _permission_help(port: str) -> str:
    return (f"permission denied on {port}: add yourself to its group (usually dialout: "
            f"`sudo usermod -aG dialout $USER`, then log in again) or add a udev rule giving you the port")


def find_image(pattern: str) -> Path:
    """The firmware file `pattern` names. A pattern the shell left unexpanded (`make flash
    FIRMWARE=ESP32_GENERIC-*.bin` passes it quoted, and a shell passes a glob with no match as it is)
    is expanded here: one match is the image; none or several are one line saying what to do."""
    if not glob.has_magic(pattern) or Path(pattern).exists():
        return Path(pattern)
    matches = sorted(glob.glob(pattern))
    if not matches:
        raise UserError(f"no firmware image matches {pattern}: download ESP32_GENERIC from "
                        "micropython.org/download/ESP32_GENERIC, or give the .bin's path")
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
        raise UserError(f"{pattern} matches {len(matches)} files ({shown}): give the one to flash")
    return Path(matches[0])


def check_image(path: Path) -> tuple:
    """(image bytes, Chip, app Image or None); one line when the file cannot be flashed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no firmware image at {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a firmware image") from None
    except PermissionError:
        raise UserError(f"cannot read {path}: permission denied") from None
    if not data:
        raise UserError(f"{path} is empty")
    try:
        chip, app = espimage.check_firmware(data)
    except espimage.ImageError as exc:
        hint = " (an interrupted download? fetch it again)" if exc.reason in ("truncated", "hash", "checksum") else ""
        raise UserError(f"{path} cannot be flashed: {exc}{hint}") from None
    return data, chip, app


def esptool_argv(chip: espimage.Chip, image: Path, baud: int, erase: bool, no_stub: bool) -> list:
    argv = ["--chip", chip.esptool_arg, "--baud", str(baud)] + (["--no-stub"] if no_stub else [])
    return argv + ["write-flash"] + (["--erase-all"] if erase else []) + [f"{chip.firmware_offset:#x}", str(image)]


def explain_failure(port: str, chip: espimage.Chip, detail: str) -> str:
    """esptool's (or pyserial's) error as one line saying what to do."""
    detail = re.sub(r"\s*For troubleshooting steps visit: \S+", "", " ".join(str(detail).split()))
    wrong = _WRONG_CHIP.search(detail)
    if wrong:
        return (f"the image is built for {chip.name}, but the board on {port} is an {wrong.group(1)}: "
                f"flash firmware built for the {wrong.group(1)}")
    if "could not open port" in detail.lower() or "Could not exclusively lock" in detail:
        if "Permission denied" in detail or "Errno 13" in detail:
            return _permission_help(port)
        if "Errno 2" in detail or "No such file" in detail:
            return f"no such port {port}: is the board plugged in?"
        if "Connection refused" in detail:
            return f"nothing answers at {port}: is the virtual board running (make vboard)?"
        if "lock" in detail.lower() or "busy" in detail.lower() or "Errno 16" in detail:
            return f"{port} is in use by another program (a serial monitor, mpremote?): close it and retry"
        return f"cannot open {port}: {detail}"
    if "Failed to connect" in detail or "No serial data received" in detail or "Invalid head of packet" in detail:
        if port.startswith("socket://"):
            return (f"no ESP32 answered on {port} ({detail}): a socket:// port carries no DTR/RTS, so esptool "
                    f"cannot reset the board into download mode; a virtual board is flashed at its rfc2217:// URL "
                    f"(make vboard prints it), a board behind a TCP serial bridge needs BOOT held while EN is pressed")
        return (f"no ESP32 answered on {port} ({detail}): hold BOOT and press EN (RST) to enter download "
                f"mode, check that the USB cable carries data, or this port is not an ESP32")
    if "will not fit" in detail:
        return f"the image does not fit the board's flash: {detail}"
    return f"esptool failed: {detail}"


def open_port(port: str):
    """The serial port as esptool opens it (exclusive), or an Rfc2217Port for rfc2217:// URLs."""
    if port.startswith("rfc2217://"):
        return Rfc2217Port(port)
    ser = serial.serial_for_url(port, exclusive=True, do_not_open=True)
    ser.open()
    return ser


def flash(port: str, image: Path, baud: int = DEFAULT_BAUD, erase: bool = False, no_stub: bool = False,
          connect_attempts: int = 7, out=None) -> None:
    out = out or sys.stdout
    if erase and no_stub:
        raise UserError("--erase needs esptool's flasher stub (the ESP32 ROM cannot erase the whole chip): "
                        "drop --no-stub")
    if baud <= 0:
        raise UserError(f"--baud {baud} must be a positive number, e.g. 460800")
    data, chip, app = check_image(image)
    check_port(port)
    desc = app.app_desc if app else None
    what = (f"MicroPython {desc['version']}" if desc and desc["project_name"] == "micropython" else
            f"{desc['project_name']} {desc['version']}" if desc else "firmware")
    print(f"flash: {what} for {chip.name} ({len(data)} bytes) -> {port} at {chip.firmware_offset:#x}, "
          f"{baud} baud{', whole chip erased first' if erase else ''}", file=out, flush=True)
    import esptool
    from esptool.targets import CHIP_DEFS
    from esptool.util import FatalError

    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    ser = None
    try:
        ser = open_port(port)
        esp = CHIP_DEFS[chip.esptool_arg](ser, ROM_BAUD)
        esp.connect("default-reset", connect_attempts)
        with _QuietAbort():
            esptool.main(esptool_argv(chip, image, baud, erase, no_stub), esp=esp)
    except (FatalError, serial.SerialException, OSError) as exc:
        if interrupted:
            raise UserError(_interrupted(port)) from None
        raise UserError(explain_failure(port, chip, str(exc))) from None
    except (KeyboardInterrupt, SystemExit):
        # click turns Ctrl-C into "Aborted!" and exit status 1
        raise UserError(_interrupted(port)) from None
    finally:
        signal.signal(signal.SIGINT, previous)
        if ser is not None:
            try:
                ser.close()
            except Exception:  # noqa: BLE001 - a port that broke mid-write: nothing left to close
                pass
    print(f"flash: done, {what} written and verified (MD5); the board was reset and boots it", file=out, flush=True)


class _QuietAbort(io.StringIO):
    """sys.stderr while esptool's click CLI runs: passes everything on but click's "Aborted!", which
    it prints on Ctrl-C before the one line this command prints instead."""

    def __enter__(self):
        self._real = sys.stderr
        sys.stderr = self
        return self

    def __exit__(self, *exc):
        sys.stderr = self._real

    def write(self, text):
        if text.strip() not in ("Aborted!", "Aborted."):
            self._real.write(text)
        return len(text)

    def flush(self):
        self._real.flush()


def _interrupted(port: str) -> str:
    return (f"interrupted while esptool was working on {port}: the board's flash may hold half an image and "
            f"not boot; run the same flash again (it resets the board into download mode first)")


def _cmd_flash(args: argparse.Namespace) -> int:
    from rmkit.serialport import resolve_port

    image = find_image(args.firmware)  # before the port: a wrong file is found without a board
    flash(resolve_port(args.port), image, baud=args.baud, erase=args.erase, no_stub=args.no_stub,
          connect_attempts=args.connect_attempts)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "flash", help="write MicroPython firmware to a board with esptool",
        description="Write a MicroPython firmware file (e.g. ESP32_GENERIC-*.bin from micropython.org) to a "
                    "board with esptool: reset into download mode, write at the chip's offset (0x1000 on an "
                    "ESP32, 0x0 on the S3/C3/C6), verify, reset. The chip comes from the image's header. A "
                    "virtual board is flashed through its rfc2217:// URL (printed by `rmkit vboard`).")
    p.add_argument("firmware", metavar="FIRMWARE",
                   help="the firmware .bin (bootloader, partition table and app), or a pattern such as "
                   "'ESP32_GENERIC-*.bin' that matches exactly one file")
    p.add_argument("--port", "-p", default="auto",
                   help="the board's serial port: /dev/ttyUSB0, /dev/ttyACM0, or a URL such as rfc2217://127.0.0.1:PORT "
                   "(default auto: the one ESP32 board on USB)")
    p.add_argument("--baud", "-b", type=int, default=DEFAULT_BAUD, help=f"baud rate for the write (default {DEFAULT_BAUD})")
    p.add_argument("--erase", action="store_true", help="erase the whole flash first (the filesystem too, on a real board)")
    p.add_argument("--no-stub", action="store_true", help="talk to the ROM only, without esptool's flasher stub (slower)")
    p.add_argument("--connect-attempts", type=int, default=7, help="esptool's attempts to reach the chip (default 7)")
    p.set_defaults(func=_cmd_flash)
