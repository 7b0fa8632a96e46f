"""`rmkit monitor` (make monitor): follow a board's serial output, one timestamped line at a time.

Opening the port leaves DTR/RTS released so the board is not reset (rmkit.serialport); Ctrl-C stops.
A line the board has not finished (a `>>> ` prompt) is shown once the line has been quiet for a moment.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime

from rmkit.errors import UserError
from rmkit.serialport import AUTO, open_port, resolve_port

QUIET_S = 0.5  # an unfinished line is shown after this long without more bytes


def _stamp() -> str:
    return datetime.now().strftime("%H:%M:%S.%f")[:-3]


def follow(conn, out=sys.stdout, raw: bool = False) -> None:
    """Print what `conn` (a pyserial port) sends until it goes away (SerialException) or Ctrl-C."""
    pending = b""
    last = time.monotonic()
    while True:
        data = conn.read(4096)
        now = time.monotonic()
        if data:
            pending += data
            last = now
        *lines, pending = pending.split(b"\n")
        if pending and not data and now - last >= QUIET_S:
            lines, pending = lines + [pending], b""
        for line in lines:
            text = line.rstrip(b"\r").decode("utf-8", errors="replace")
            out.write(text + "\n" if raw else f"[{_stamp()}] {text}\n")
        if lines:
            out.flush()


def _cmd_monitor(args: argparse.Namespace) -> int:
    import serial

    if args.name:
        from rmkit.vboard import runtime

        record = runtime.read_record(args.name)
        if record is None:
            raise UserError(f"no virtual board named {args.name!r} is running (start one with: make vboard "
                            f"BOARD={args.name}), or give a real board's PORT=")
        port = record["url"]
    else:
        port = resolve_port(args.port)
    conn = open_port(port, baudrate=args.baud)
    print(f"monitor: {port} at {args.baud} baud; Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        follow(conn, raw=args.raw)
    except serial.SerialException as exc:
        print(f"rmkit monitor: {port} went away ({exc}): unplugged or reset into another port?", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("monitor: stopped", file=sys.stderr)
        return 0
    finally:
        conn.close()
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "monitor", help="follow a board's serial output with timestamps (make monitor)",
        description="Print every line a board writes to its serial port, with the time it arrived, until "
                    "Ctrl-C. The board is not reset by opening the port. Without --port or --name, the one "
                    "ESP32 board on USB (CP210x, CH340/CH9102, FTDI or Espressif USB) is used.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--port", default=AUTO, help="serial port or URL (default: auto-detect on USB)")
    where.add_argument("--name", help="a running virtual board's name (make vboard BOARD=)")
    p.add_argument("--baud", type=int, default=115200, help="baud rate (default 115200, MicroPython's)")
    p.add_argument("--raw", action="store_true", help="no timestamps")
    p.set_defaults(func=_cmd_monitor)
