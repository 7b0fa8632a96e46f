"""`rmkit vboard` (one virtual board in the foreground) and `rmkit repl` (a terminal on it)."""

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from rmkit import VENV_BIN, venv_tool
from rmkit.errors import UserError
from rmkit.net import port_in_use
from rmkit.vboard import runtime
from rmkit.vboard.air import lab_air
from rmkit.vboard.board import VirtualBoard
from rmkit.vboard.cpu_speed import CPU_HELP, CPU_MODELS, cpu_speed
from rmkit.vboard.errors import BoardError



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
    vboard.add_argument("--rfc2217-port", type=int, default=0,
                        help="TCP port of the RFC 2217 serial port (DTR/RTS for esptool; default: a free one)")
    vboard.add_argument("--pty", type=Path, help="path of the pty symlink (default: <runtime dir>/<name>.pty)")
    vboard.add_argument("--softap", metavar="HOST:PORT",
                        help="where the firmware's SoftAP HTTP server listens (AP ifconfig() reports HOST, "
                        "/settings.json gets prov_port=PORT; default 127.0.0.1:<free port>)")
    vboard.add_argument("--air", type=Path,
                        help="air file: the simulated Wi-Fi access points (JSON). Default: <flash>.air.json, "
                        "written on first use with one WPA2 network, 'rmkit-lab', and a random passphrase")
    vboard.add_argument("--mac", help="base MAC, e.g. 24:0a:c4:12:34:56 (default: derived from --name)")
    vboard.add_argument("--baud", type=int,
                        help="pace what the host sends to the board as a UART at this rate does (115200: a DevKit's "
                        "USB-serial bridge), to see deploys and pastes take a real board's time; default: no limit")
    vboard.add_argument("--heap", help="the firmware's GC heap: omit it for an ESP32's (56 KiB at boot, "
                        "growing into ESP-IDF's heap as on ESP32_GENERIC); 110K: a fixed heap of that many "
                        "64-bit bytes, no growth")
    vboard.add_argument("--cpu", choices=CPU_MODELS, help=CPU_HELP)
    vboard.add_argument("--log", type=Path, help="serial log file (default: <runtime dir>/<name>.log)")
    vboard.add_argument("--no-main", action="store_true", help="do not run boot.py/main.py at power-on and resets")
    vboard.add_argument("-q", "--quiet", action="store_true", help="do not echo the board's output here")
    vboard.set_defaults(func=run_vboard)

    repl = sub.add_parser(
        "repl", help="open a terminal on a running virtual board",
        description="Connect this terminal to the board started by `rmkit vboard --name NAME`, or to a real "
        "board's serial port with --port (through mpremote; `auto`: the one ESP32 on USB) "
        "(Ctrl-] quits; Ctrl-C, Ctrl-D, Ctrl-E go to the board).")
    where = repl.add_mutually_exclusive_group()
    where.add_argument("--name", default="vb1", help="virtual board name (default vb1)")
    where.add_argument("--port", help="a board's serial port, e.g. /dev/ttyUSB0, or auto")
    repl.set_defaults(func=run_repl)

    press = sub.add_parser(
        "vboard-button", help="press the BOOT button (GPIO0) of a running virtual board",
        description="Hold the BOOT button of the board started by `rmkit vboard --name NAME` (or `make sandbox`) "
        "for --hold seconds, then release it, as by hand. The node resets Wi-Fi when it is released after 3 to "
        "10 s and resets to factory when released after 10 s or more (docs/protocol.md 5.5).")
    press.add_argument("--name", default="vb1", help="virtual board name (default vb1)")
    press.add_argument("--hold", type=float, default=0.2, metavar="SECONDS",
                       help="how long to hold it (default 0.2: a short press, which resets nothing)")
    press.set_defaults(func=run_button)


def run_vboard(args: argparse.Namespace) -> int:
    try:
        runtime.check_name(args.name)
    except BoardError as exc:
        raise UserError(str(exc)) from None
    running = runtime.read_record(args.name)
    if running:
        raise UserError(f"board {args.name} is already running (pid {running['pid']}, {running['url']}); "
                        f"stop it, or pick another --name (make vboard BOARD=...)")
    sharing = runtime.board_using_flash(args.flash)
    if sharing:
        raise UserError(f"flash {args.flash} is in use by board {sharing['name']} (pid {sharing['pid']}); "
                        f"give this board its own --flash (make vboard FLASH=..., default vboards/<BOARD>)")
    if args.port and port_in_use(args.port):
        raise UserError(f"TCP port {args.port} on 127.0.0.1 is already in use (pick another --port, or omit it)")
    if args.rfc2217_port and port_in_use(args.rfc2217_port):
        raise UserError(f"TCP port {args.rfc2217_port} on 127.0.0.1 is already in use "
                        f"(pick another --rfc2217-port, or omit it)")
    if args.flash.exists() and not args.flash.is_dir():  # before anything is written next to it
        raise UserError(f"flash path {args.flash} is a file, not a directory: give the board's flash directory "
                        f"(a new one is an erased board), e.g. make vboard FLASH=vboards/{args.name}")
    air = args.air or args.flash.with_name(args.flash.name + ".air.json")
    echo = None if args.quiet else _Echo()
    try:
        wifi = lab_air(air) if args.air is None else None
        board = VirtualBoard(name=args.name, flash_dir=args.flash, mac=args.mac, air=air, heap=args.heap,
                             tcp_port=args.port, pty_link=args.pty, softap=args.softap, log_path=args.log,
                             run_main=not args.no_main, echo=echo, rfc2217_port=args.rfc2217_port, baud=args.baud,
                             cpu=args.cpu)
    except BoardError as exc:
        raise UserError(str(exc)) from None
    # Ctrl-C (even when started with SIGINT ignored, as `cmd &` does), `kill` and a closed
    # terminal all stop the board and everything it started
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    print(f"vboard {args.name}: starting (flash {args.flash}, heap {args.heap or 'as an ESP32'}"
          + (f", CPU at {args.cpu.upper()} speed" if args.cpu else "") + ")", flush=True)
    try:
        if args.cpu:  # measured once per machine (a few seconds), then cached; board.start() reads the cache
            cpu_speed(args.cpu, say=lambda line: print(f"vboard {args.name}: {line}", flush=True))
        board.start()
    except BoardError as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    try:
        runtime.record_board(board)
        helped = _print_connect_help(board, air, wifi)
        if echo:
            echo.enable()
        entries = ProvisioningEntries(board.serial_log, skip_first=helped)
        while board.running:
            time.sleep(0.2)
            # the firmware started, after a deploy and a reset, or is back in provisioning: how to provision it now
            for _ in range(entries.new()):
                text = _provisioning_help(board, wifi)
                if echo:
                    echo.say(text)
                else:
                    print(text, flush=True)
        print(f"vboard {args.name}: board halted; see {board.serial_log}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nvboard {args.name}: stopping", flush=True)
        return 0
    finally:
        board.stop()
        runtime.remove_record(args.name, os.getpid())


def _repl_on_port(port: str) -> int:
    """A real board's REPL through mpremote's terminal, after checking the port opens (one clear line if not)."""
    from rmkit.serialport import open_port, resolve_port

    port = resolve_port(port)
    open_port(port).close()
    return os.spawnv(os.P_WAIT, str(VENV_BIN / "mpremote"), ["mpremote", "connect", port, "repl"])


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

    def say(self, text: str) -> None:
        """Lines of this command's own between the board's, on a line of their own."""
        with self._lock:
            self._write(("" if self._at_line_start else "\n").encode() + text.encode() + b"\n")

    _at_line_start = True

    def _write(self, data: bytes) -> None:
        # minus control bytes (0x04, 0x01...) that would garble a terminal
        text = bytes(b for b in data if b >= 0x20 or b in (0x09, 0x0A, 0x0D))
        if text:
            self._at_line_start = text.endswith(b"\n")
        sys.stdout.buffer.write(text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        sys.stdout.flush()


class ProvisioningEntries:
    """Counts the node's entries into provisioning in a board's serial log (`state: provisioning (service
    ...)`: the firmware started its provisioning service), as they come."""

    MARK = b"state: provisioning (service "

    def __init__(self, serial_log: Path, skip_first: bool = False):
        self._log = Path(serial_log)
        self._offset = 0
        self._skip = 1 if skip_first else 0

    def new(self) -> int:
        """Entries since the last call (the first one skipped when the banner already said how to provision)."""
        try:
            with open(self._log, "rb") as log:
                log.seek(self._offset)
                text = log.read()
        except OSError:
            return 0
        end = text.rfind(b"\n") + 1  # whole lines only: a mark may be half written
        count = text[:end].count(self.MARK)
        self._offset += end
        skipped = min(count, self._skip)
        self._skip -= skipped
        return count - skipped


def _print_connect_help(board: VirtualBoard, air: Path, wifi) -> bool:
    """The banner; True when it said how to provision the firmware on the flash."""
    mpremote, ampy = venv_tool("mpremote"), venv_tool("ampy")
    mac_cmd = ("import network, binascii; "
               "print(binascii.hexlify(network.WLAN(network.STA_IF).config('mac'), ':').decode())")
    pty = shlex.quote(str(board.pty_link))
    print(f"vboard {board.name}: up in {board.start_seconds:.2f} s, MAC {board.mac}\n"
          f"  serial (socket) {board.url}\n"
          f"  serial (pty)    {board.pty_link} -> {board.pty_path}\n"
          f"  serial (RFC 2217, DTR/RTS) {board.rfc2217_url} (esptool, make flash PORT=...)\n"
          f"  raw SPI flash   {board.spi_flash_path} (bootloader, partition table, app; / is the flash dir)\n"
          f"  SoftAP          {board.softap[0]}:{board.softap[1]} (prov_port in /settings.json)\n"
          f"  serial log      {board.serial_log}\n"
          + (f"  CPU             {board.cpu_speed.describe()}\n" if board.cpu_speed else "")
          + (f"  Wi-Fi           simulated network {wifi[0]!r}, passphrase {wifi[1]} (in {air}; AIR= for another)\n"
             if wifi else f"  Wi-Fi           the access points in {air}\n")
          + f"connect with:\n"
          f"  {mpremote} connect {board.url} resume exec \"{mac_cmd}\" + reset\n"
          f"  {mpremote} connect {pty} repl\n"
          f"  {ampy} --port {pty} ls\n"
          f"  make repl BOARD={board.name}\n"
          f"  {venv_tool('esptool')} --port {board.rfc2217_url} chip-id\n"
          f"  {venv_tool('rmkit')} repl --name {board.name}\n"
          "(ampy needs the pty: it cannot open socket:// URLs; Ctrl-] leaves `make repl`; mpremote's `resume` keeps "
          "it from soft-resetting the board first, and `+ reset` starts the firmware again that its exec "
          "interrupted)", flush=True)
    help_text = _provisioning_help(board, wifi)
    print(help_text, flush=True)
    print("Ctrl-C stops the board.", flush=True)
    return help_text.startswith("provisioning:")


def _provisioning_help(board: VirtualBoard, wifi) -> str:
    """How to provision this board, or what it lacks: firmware (make deploy), or the factory data and
    broker it needs to go online (make sandbox has both)."""
    flash = Path(board.flash_dir)
    if not any((flash / name).exists() for name in ("main.py", "main.mpy")):
        return ("no firmware on this flash yet; deploy it, then Ctrl-D in the REPL (a soft reset) runs it:\n"
                f"  make deploy FLASH={shlex.quote(str(flash))}\n"
                "For the whole flow with a broker and the local cloud, use `make sandbox` instead.")
    try:
        factory = json.loads((flash / "factory" / "factory.json").read_text())
    except (OSError, ValueError):
        factory = {}
    factory = factory if isinstance(factory, dict) else {}
    pop = factory.get("pop")
    if isinstance(pop, str):
        where = "from factory data"
    else:  # the firmware's default (docs/protocol.md 7.4): hex of the MAC's last four bytes
        pop, where = board.mac.replace(":", "")[4:], "derived from the MAC: no factory data, so guessable; " \
                                                     "rmkit factory writes a random one"
    sec = factory.get("sec_ver", 1)
    # settings.json overrides the factory data's transport, as on the node (rmnode/config.py)
    try:
        settings = json.loads((flash / "settings.json").read_text())
    except (OSError, ValueError):
        settings = {}
    transport = (settings.get("transport") if isinstance(settings, dict) else None) or factory.get("transport")
    if transport == "ble":
        served = f"BLE as {board.service_name} on the simulated radio {board.ble_hci}"
        reach = f"--transport ble --device {board.service_name} --hci {board.ble_hci}"
    else:
        served = f"SoftAP HTTP at {board.softap[0]}:{board.softap[1]}" + (
            f" and BLE as {board.service_name}" if transport == "both" else "")
        reach = f"--host {board.softap[0]}:{board.softap[1]}"
    help_text = (f"provisioning: {served}, Security {sec}, "
                 f"PoP {pop or '(none)'} ({where})" + (", for example:\n" if wifi else "\n"))
    if wifi:
        rmkit = venv_tool("rmkit")
        security = f"--sec 1 --pop {shlex.quote(pop)}" if sec == 1 and pop else "--sec auto"
        help_text += (f"  {rmkit} provision {reach} {security} "
                      f"--ssid {shlex.quote(wifi[0])} --passphrase {shlex.quote(wifi[1])} --user-id my-user\n")
    if not factory.get("cert"):
        help_text += ("This board has no node certificate, so it joins Wi-Fi but cannot reach a broker to publish "
                      "its mapping: `make sandbox` runs a board with factory data, a broker and the cloud.")
    return help_text.rstrip("\n")


def run_button(args: argparse.Namespace) -> int:
    from rmkit.vboard.button import set_button

    try:
        runtime.check_name(args.name)
    except BoardError as exc:
        raise UserError(str(exc)) from None
    if not 0 <= args.hold <= 3600:
        raise UserError(f"--hold {args.hold:g}: give 0 to 3600 seconds")
    record = runtime.read_record(args.name)
    if record is None or not record.get("state_dir"):
        raise UserError(f"no virtual board named {args.name!r} is running (start one with: make vboard BOARD={args.name})")
    state_dir = Path(record["state_dir"])
    print(f"vboard {args.name}: BOOT button held for {args.hold:g} s", flush=True)
    set_button(state_dir, pressed=True)
    try:
        time.sleep(args.hold)
    finally:
        set_button(state_dir, pressed=False)
    print(f"vboard {args.name}: BOOT button released; the board's log says what it did ({record['serial_log']})",
          flush=True)
    return 0


def run_repl(args: argparse.Namespace) -> int:
    from rmkit.vboard.terminal import run_terminal

    if args.port:
        return _repl_on_port(args.port)

    try:
        runtime.check_name(args.name)
    except BoardError as exc:
        raise UserError(str(exc)) from None
    record = runtime.read_record(args.name)
    if record is None:
        raise UserError(f"no virtual board named {args.name!r} is running "
                        f"(start one with: make vboard BOARD={args.name})")
    return run_terminal(record["tcp_port"], f"{args.name} ({record['url']})")
