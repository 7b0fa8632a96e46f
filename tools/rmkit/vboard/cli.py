"""`rmkit vboard` (one virtual board in the foreground) and `rmkit repl` (a terminal on it)."""

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from rmkit.errors import UserError
from rmkit.net import port_in_use
from rmkit.vboard import runtime
from rmkit.vboard.board import VirtualBoard
from rmkit.vboard.errors import BoardError

VENV_BIN = Path(sys.executable).parent


def register(sub) -> None:
    vboard = sub.add_parser(
        "vboard", help="run a virtual ESP32 board in the foreground",
        description="Start a virtual ESP32 (the MicroPython unix port behind a pty and a TCP "
        "port) and keep it running until Ctrl-C. mpremote and ampy talk to it like to a real "
        "board; boot.py and main.py from its flash directory run at power-on and after resets.")
    vboard.add_argument("--name", default="vb1", help="board name; `rmkit repl --name` finds it by this (default vb1)")
    vboard.add_argument("--flash", required=True, type=Path,
                        help="flash directory, mounted as / on the board (created if missing; new = erased board)")
    vboard.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free one)")
    vboard.add_argument("--pty", type=Path, help="path of the pty symlink (default: <runtime dir>/<name>.pty)")
    vboard.add_argument("--softap", metavar="HOST:PORT",
                        help="where the firmware's SoftAP HTTP server listens (AP ifconfig() reports HOST, "
                        "/settings.json gets prov_port=PORT; default 127.0.0.1:<free port>)")
    vboard.add_argument("--air", type=Path, help="air file: the simulated Wi-Fi access points (JSON; default: none)")
    vboard.add_argument("--mac", help="base MAC, e.g. 24:0a:c4:12:34:56 (default: derived from --name)")
    vboard.add_argument("--heap", default="110K", help="MicroPython heap for the firmware (default 110K, ESP32 without PSRAM)")
    vboard.add_argument("--log", type=Path, help="serial log file (default: <runtime dir>/<name>.log)")
    vboard.add_argument("--no-main", action="store_true", help="do not run boot.py/main.py at power-on and resets")
    vboard.add_argument("-q", "--quiet", action="store_true", help="do not echo the board's output here")
    vboard.set_defaults(func=run_vboard)

    repl = sub.add_parser(
        "repl", help="open a terminal on a running virtual board",
        description="Connect this terminal to the board started by `rmkit vboard --name NAME` "
        "(Ctrl-] quits; Ctrl-C, Ctrl-D, Ctrl-E go to the board).")
    repl.add_argument("--name", default="vb1", help="board name (default vb1)")
    repl.set_defaults(func=run_repl)


def run_vboard(args: argparse.Namespace) -> int:
    try:
        runtime.check_name(args.name)
    except BoardError as exc:
        raise UserError(str(exc)) from None
    running = runtime.read_record(args.name)
    if running:
        raise UserError(f"board {args.name} is already running (pid {running['pid']}, {running['url']}); "
                        f"stop it or pick another --name")
    if args.port and port_in_use(args.port):
        raise UserError(f"TCP port {args.port} on 127.0.0.1 is already in use (pick another --port, or omit it)")
    echo = None if args.quiet else _Echo()
    try:
        board = VirtualBoard(name=args.name, flash_dir=args.flash, mac=args.mac, air=args.air, heap=args.heap,
                             tcp_port=args.port, pty_link=args.pty, softap=args.softap, log_path=args.log,
                             run_main=not args.no_main, echo=echo)
    except BoardError as exc:
        raise UserError(str(exc)) from None
    # Ctrl-C (even when started with SIGINT ignored, as `cmd &` does), `kill` and a closed
    # terminal all stop the board and everything it started
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    print(f"vboard {args.name}: starting (flash {args.flash}, heap {args.heap})", flush=True)
    try:
        board.start()
    except BoardError as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    try:
        runtime.write_record(args.name, {
            "name": args.name, "pid": os.getpid(), "url": board.url, "tcp_port": board.tcp_port,
            "pty_link": str(board.pty_link.absolute()),
            "pty": board.pty_path, "mac": board.mac, "flash": str(args.flash.resolve()),
            "softap": "%s:%d" % board.softap, "serial_log": str(board.serial_log.resolve()),
        })
        _print_connect_help(board)
        if echo:
            echo.enable()
        while board.running:
            time.sleep(0.2)
        print(f"vboard {args.name}: board halted; see {board.serial_log}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nvboard {args.name}: stopping", flush=True)
        return 0
    finally:
        board.stop()
        runtime.remove_record(args.name, os.getpid())


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


class _Echo:
    """Shows the board's output here once the connect help is printed (held back until then)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held = bytearray()
        self._on = False

    def __call__(self, data: bytes) -> None:
        with self._lock:
            if self._on:
                self._write(data)
            else:
                self._held += data

    def enable(self) -> None:
        with self._lock:
            self._on = True
            self._write(bytes(self._held))
            self._held.clear()

    @staticmethod
    def _write(data: bytes) -> None:
        # minus raw-REPL protocol bytes (0x04, 0x01...) that would garble a terminal
        text = bytes(b for b in data if b >= 0x20 or b in (0x09, 0x0A, 0x0D))
        sys.stdout.buffer.write(text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        sys.stdout.flush()


def _print_connect_help(board: VirtualBoard) -> None:
    mpremote, ampy = shlex.quote(str(VENV_BIN / "mpremote")), shlex.quote(str(VENV_BIN / "ampy"))
    mac_cmd = "import network; print(network.WLAN(network.STA_IF).config('mac'))"
    pty = shlex.quote(str(board.pty_link))
    print(f"vboard {board.name}: up in {board.start_seconds:.2f} s, MAC {board.mac}\n"
          f"  serial (socket) {board.url}\n"
          f"  serial (pty)    {board.pty_link} -> {board.pty_path}\n"
          f"  SoftAP          {board.softap[0]}:{board.softap[1]} (prov_port in /settings.json)\n"
          f"  serial log      {board.serial_log}\n"
          f"connect with:\n"
          f"  {mpremote} connect {board.url} exec \"{mac_cmd}\"\n"
          f"  {mpremote} connect {pty} repl\n"
          f"  {ampy} --port {pty} ls        (ampy needs the pty: it cannot open socket:// URLs)\n"
          f"  make repl BOARD={board.name}   (or: rmkit repl --name {board.name})\n"
          f"Ctrl-C stops the board.", flush=True)


def run_repl(args: argparse.Namespace) -> int:
    from rmkit.vboard.terminal import run_terminal

    try:
        runtime.check_name(args.name)
    except BoardError as exc:
        raise UserError(str(exc)) from None
    record = runtime.read_record(args.name)
    if record is None:
        raise UserError(f"no virtual board named {args.name!r} is running "
                        f"(start one with: make vboard BOARD={args.name})")
    return run_terminal(record["tcp_port"], f"{args.name} ({record['url']})")
