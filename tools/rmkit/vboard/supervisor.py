"""The virtual board's serial port: a pty and a TCP port wired to a restartable MicroPython process.

One thread owns every file descriptor. It pumps bytes between the clients (the host-side pty and
any TCP connections) and the MicroPython process, which runs on a pty of its own, and restarts that
process whenever the board "reboots". Why each piece is there (each measured on the unix port):

- The child's pty has iflag=0, oflag=0, lflag=0: no echo, no line editing, no `\\n` -> `\\r\\r\\n`
  (the port prints `\\r\\n` itself, and mpremote matches "raw REPL; CTRL-B to exit\\r\\n" exactly),
  and no ISIG, so a 0x03 byte is only ever data. Output at the friendly REPL is then cooked here
  (`\\n` -> `\\r\\n`) as a board's is; the raw REPL stays byte-exact.
- Ctrl-C: the unix port interrupts code only through SIGINT, and installs its SIGINT handler only
  while code runs (at the REPL SIGINT is fatal). So a 0x03 from a client becomes SIGINT when the
  child's /proc/PID/status shows SIGINT caught, and is forwarded as a byte otherwise. That also
  covers code started by raw-paste, where the tty route does not work.
- Soft reset on the unix port ends the process. The supervisor prints "MPY: soft reboot", starts a
  new process and, if the client was in the raw REPL, puts the new one back into it (ESP32 runs
  boot.py but not main.py then), which is what mpremote and ampy wait for.
- How the process ended says what happened: exit status = soft reset (Ctrl-D, SystemExit),
  SIGUSR2 = SystemExit in boot.py/main.py, SIGUSR1 = machine.reset(), our SIGKILL = reset() or
  power_cut(); anything else (a signal, a FATAL error) is a crash, reported in the serial stream
  and to waiting callers, and followed by a reboot like an ESP32 panic; three crashes within
  10 s halt the board instead of looping.
- `on_output` (what `rmkit vboard` echoes to its terminal) is the console a person watches: it gets
  everything the board prints except a raw-REPL session, which is one client's private exchange
  (mpremote's `fs cp` asks os.stat() about each file it copies and reads the expected ENOENT
  tracebacks back; raw-paste's flow-control bytes), as on a board whose port one program holds. The
  serial log and every client still get every byte.
- A line with `vboard FAULT: ` from the process (sim/vb_irq.py: a BLE IRQ handler released the GIL)
  is a fault: recorded with its log offset and reported to waiting callers like a crash, but the
  board carries on (on an ESP32 the harm is silent).
- Below MicroPython is the chip (chip.py, a class of its own): DTR/RTS from RFC 2217 clients reach EN
  and IO0, the ROM's download mode answers esptool, and a boot from flash that finds no MicroPython
  loops on the ROM's or the bootloader's messages. The supervisor calls it when lines change, bytes
  arrive while MicroPython does not run, or its timer is due; it calls back to print, to start
  MicroPython and to stop it at EN low (the ChipHost methods below).
- Each source the I/O thread waits on carries its own callback (the selector key's data): the wake-up
  pipe, the host pty, the two listening sockets, each client, the MicroPython process's pty.
- The task watchdog (machine.WDT, sim/vb_machine.py) is a timer kept here, as the chip's timer group
  keeps it outside the CPU: each feed rewrites the state file `wdt` (its content the timeout in ms), and
  when the file is older than that while MicroPython runs, the process is killed with ESP-IDF's panic
  lines and the board boots with reset_cause() WDT_RESET. The timer outlives soft reboots (the port
  never unsubscribes its watchdog user) and ends at every other reset.
- With a CPU factor (`cpu_factor`, VirtualBoard(cpu="esp32")), a CpuPacer (cpu.py) stops and continues
  each process so that its CPU-bound work takes that many times as long, from the moment the
  simulator's setup is done (the ready file) until the process is killed or ends; every path that
  kills or reaps a process first tells the pacer to forget it (and to continue it, were it stopped),
  and Ctrl-C continues a stopped process at once, so the interrupt is handled.
"""

import ctypes
import functools
import logging
import os
import select
import selectors
import signal
import socket
import subprocess
import termios
import threading
import time
import traceback
import tty
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from rmkit.vboard.cpu import CpuPacer
from rmkit.vboard.chip import POWER_ON, Chip
from rmkit.vboard.rfc2217 import Rfc2217Client
from rmkit.vboard.rom import SpiFlash

# The pacing step of a board with a baud rate: bytes cross its UART in slices of this much line time
UART_SLICE_S = 0.01
# How long download-mode output waits for a slow reader of the pty before it is dropped
DOWNLOAD_READER_PATIENCE_S = 5.0
log = logging.getLogger(__name__)

RAW_BANNER = b"raw REPL; CTRL-B to exit"
FRIENDLY_BANNER = b'Type "help()" for more information.'
SOFT_REBOOT = b"MPY: soft reboot\r\n"
SW_RESET = b"rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
# machine.reset_cause() values on the ESP32 port (ports/esp32/modmachine.c, v1.24.0-v1.26.1): power-on and
# EN read PWRON_RESET; machine.reset() and a panic HARD_RESET (ESP_RST_SW, ESP_RST_PANIC); the task
# watchdog WDT_RESET (ESP_RST_TASK_WDT); the boot after a soft reset SOFT_RESET (is_soft_reset)
PWRON_RESET, HARD_RESET, WDT_RESET, SOFT_RESET = 1, 2, 3, 5
# The task watchdog's expiry as ESP-IDF prints it for MicroPython's watchdog user, which runs on no
# particular core (components/esp_system/task_wdt/task_wdt.c esp_task_wdt_print_triggered_tasks and
# task_wdt_timeout_abort; panic.c "Rebooting..."; ports/esp32/machine_wdt.c names the user); the
# backtraces between these lines are left out. {ms}: milliseconds since the chip reset.
TASK_WDT_PANIC = ("E ({ms}) task_wdt: Task watchdog got triggered. The following tasks/users did not reset the "
                  "watchdog in time:\r\n"
                  "E ({ms}) task_wdt:  - mpy_machine_wdt (CPU 0/1)\r\n"
                  "E ({ms}) task_wdt: Aborting.\r\n"
                  "Rebooting...\r\n")
CRASH_LIMIT, CRASH_WINDOW_S = 3, 10.0
EPOCH_2000 = 946684800     # the ESP32's RTC reads 2000-01-01 00:00:00 at power-on
SIGINT_COALESCE_S = 0.25   # ampy sends Ctrl-C twice 0.1 s apart; the board sees one interrupt
MAX_PENDING_INPUT = 1 << 20
FAULT_MARK = b"vboard FAULT: "  # sim/vb_irq.py FAULT_PREFIX
MAX_FAULT_LINE = 4096  # the longest unfinished line kept while looking for FAULT_MARK

# Runs in the child: die with the supervisor thread, SIGINT default (MicroPython installs its own
# handler around running code), then MicroPython's own main().
LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"  # PR_SET_PDEATHSIG
    "os.getppid() == int(os.environ['VBOARD_PARENT']) or sys.exit(70)\n"
    "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
    "from micropython_run import run_main\n"
    "sys.exit(run_main(['micropython'] + sys.argv[1:]))\n"
)


def interrupt_main_thread(pid: int) -> None:
    """SIGINT to the MicroPython process's main thread only (tgkill): on a board Ctrl-C interrupts the main task
    (the UART's receive handler schedules the KeyboardInterrupt there), but a signal sent to the process goes to
    any of its threads, and the unix port raises KeyboardInterrupt in whichever one ran the handler: a BLE
    radio's reader thread, or a thread the firmware started, instead of the code being interrupted."""
    try:
        if _tgkill(pid, pid, signal.SIGINT) != 0:  # the main thread's id is the process id
            raise OSError(ctypes.get_errno(), "tgkill")
    except (AttributeError, OSError):
        try:
            os.kill(pid, signal.SIGINT)  # gone, or no tgkill: the process as a whole
        except ProcessLookupError:
            pass


try:
    _tgkill = ctypes.CDLL(None, use_errno=True).tgkill  # glibc 2.30 and newer
    _tgkill.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
except (AttributeError, OSError):
    def _tgkill(pid: int, tid: int, sig: int) -> int:
        raise AttributeError("tgkill")


@dataclass
class Child:
    proc: subprocess.Popen
    master: int
    gen: int
    ready: bool = False
    pending: bytearray = field(default_factory=bytearray)
    closed: bool = False    # killed and cleaned up at once (EN reset), no exit to handle
    on_io: Optional[Callable[[int], None]] = None   # its selector callback (events)


@dataclass
class Crash:
    offset: int      # serial log offset where the crash was reported
    message: str


@dataclass
class Fault:
    offset: int      # serial log offset of the fault line's FAULT_MARK
    message: str     # the line after FAULT_MARK


class Supervisor(threading.Thread):
    """Serial hub + process keeper for one board, with its chip (chip.py) below. Public methods are safe
    from any thread; `chip`, `rom_state` and `boot_attempts` are the chip's, read under `cond`."""

    def __init__(self, *, name: str, argv: list, env: dict, state_dir: Path, log_path: Path,
                 tcp_sock: socket.socket, pty_link: Path, boot_mode: str,
                 on_output: Optional[Callable[[bytes], None]] = None,
                 rfc2217_sock: Optional[socket.socket] = None, spi_flash: Optional[SpiFlash] = None,
                 mac: bytes = bytes(6), reset_circuit: str = "uart", baud: Optional[int] = None,
                 cpu_factor: Optional[float] = None):
        super().__init__(name=f"vboard-{name}", daemon=True)
        self.board_name = name
        self._argv = argv
        self._env = env
        self._state_dir = state_dir
        self._ready_file = state_dir / "ready"
        self._tcp = tcp_sock
        self._boot_mode = boot_mode          # "full", or "none" for run_main=False
        self._on_output = on_output
        self._log = open(log_path, "wb")
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)  # a full pipe already holds a wake-up
        self._requests: list = []
        self._clients: list = []
        self._child: Optional[Child] = None
        self._raw_mode = False
        # The UART's speed toward the board (8N1: 10 bits a byte), None for as fast as the pty goes: what
        # the host sends reaches MicroPython at that pace, as through a USB-serial bridge at `baud`
        self._byte_s = 10.0 / baud if baud else None
        self._rx_line_free = 0.0     # when the line toward the board has sent what it was given
        self._rx_due: Optional[float] = None
        self._ended_cr = False
        self._tail = b""
        self._last_sigint = 0.0
        self._expected_kill: Optional[str] = None
        self._reset_cause = PWRON_RESET
        self._chip_started = time.monotonic()  # the last reset other than a soft one (ESP-IDF's uptime)
        self._wdt_file = state_dir / "wdt"      # sim/vb_machine.py WDT: fed = rewritten
        self._wdt_seen = (None, 0.0)            # (mtime, timeout s) of the wdt file last read
        self.watchdog_resets = 0
        self._crash_times: list = []
        self._stopping = False
        self.cond = threading.Condition()
        self.gen = 0                 # number of MicroPython processes started so far
        self.ready_gen = 0           # latest generation that finished its setup
        self.rebooting = True        # from a process's end until the next one finished its setup
        self.log_size = 0
        self.crashes: list = []
        self.faults: list = []
        self._unfinished_line = b""  # the child's output after its last line end, as logged
        self.halted: Optional[str] = None
        self.pids: list = []
        self.startup_failure: Optional[str] = None
        self.failure: Optional[str] = None   # the traceback, if this thread ended on an exception
        # the RFC 2217 port, whose modem lines reach the chip's EN and IO0
        self._rfc_listen = rfc2217_sock
        self._rfc_clients: dict = {}
        self._flash = spi_flash
        self._chip = Chip(self, flash=spi_flash, mac=mac, reset_circuit=reset_circuit, cond=self.cond,
                          baud=lambda: next((c.lines.baudrate for c in self._rfc_clients.values()), 115200),
                          name=name)
        # the modelled CPU speed: each process's CPU-bound work takes cpu_factor times as long
        self.pacer = CpuPacer(cpu_factor, name=f"vboard-{name}-cpu") if cpu_factor else None

        self.host_master, self.host_slave = os.openpty()
        tty.setraw(self.host_slave)  # no echo of the board's own output back into it
        os.set_blocking(self.host_master, False)
        self.pty_name = os.ttyname(self.host_slave)
        self.pty_link = pty_link
        pty_link.parent.mkdir(parents=True, exist_ok=True)
        if pty_link.is_symlink():
            pty_link.unlink()
        elif pty_link.exists():
            raise FileExistsError(f"pty link path {pty_link} exists and is not a symlink")
        pty_link.symlink_to(self.pty_name)

    # ---- requests from other threads -------------------------------------------------------

    def request(self, what: str) -> None:
        with self.cond:
            if self._wake_w is None:  # the I/O thread has ended (stopped, or failed: see `failure`)
                return
            self._requests.append(what)
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass

    def child_pid(self) -> Optional[int]:
        child = self._child
        return child.proc.pid if child else None

    @property
    def chip(self) -> str:
        """app (MicroPython runs, or is about to), reset (EN low), download, bootloop, idle."""
        return self._chip.state

    @property
    def rom_state(self) -> Optional[str]:
        """Why MicroPython is not running, while it is not."""
        return self._chip.rom_state

    @property
    def boot_attempts(self) -> int:
        """Boots from flash or into download mode so far."""
        return self._chip.boot_attempts

    # ---- the I/O thread ---------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
            self._sel.register(self.host_master, selectors.EVENT_READ, self._on_host_pty)
            self._sel.register(self._tcp, selectors.EVENT_READ, self._accept_client)
            if self._rfc_listen is not None:
                self._sel.register(self._rfc_listen, selectors.EVENT_READ, self._accept_rfc2217)
            if self.pacer is not None:
                self.pacer.start()
            self.emit(POWER_ON)
            self._chip.boot_from_flash()
            while not self._stopping:
                child = self._child
                timeout = 0.005 if child and not child.ready else 0.5
                chip_due = self._chip.timer_due_in(time.monotonic())
                if chip_due is not None:
                    timeout = min(timeout, chip_due)
                if self._rx_due is not None:
                    timeout = min(timeout, max(0.0, self._rx_due - time.monotonic()))
                starving = self._watchdog_left()
                if starving is not None:
                    timeout = min(timeout, max(0.0, starving))
                for key, events in self._sel.select(timeout):
                    key.data(events)
                if self._rx_due is not None and time.monotonic() >= self._rx_due:
                    self._rx_due = None
                    self._flush_child_input()
                self._chip.run_timer()
                self._check_ready()
                self._check_watchdog()
                self._handle_requests()
        except Exception:  # keep the reason; callers see a halted board, and VirtualBoard.stop() raises it
            log.exception("vboard %s: supervisor failed", self.board_name)
            with self.cond:
                self.failure = traceback.format_exc()
                self.halted = "supervisor failed: " + self.failure.strip().splitlines()[-1]
                self.cond.notify_all()
        finally:
            self._shutdown()

    # ---- one callback per selector source (the key's data), each called with the events ----------

    def _on_wake(self, events: int) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass

    def _on_host_pty(self, events: int) -> None:
        try:
            data = os.read(self.host_master, 65536)
        except (BlockingIOError, OSError):
            return
        self._on_input(data)

    def _accept_client(self, events: int) -> None:
        conn, _ = self._tcp.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(2.0)
        self._clients.append(conn)
        self._sel.register(conn, selectors.EVENT_READ, functools.partial(self._on_client, conn))

    def _on_client(self, conn: socket.socket, events: int) -> None:
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if data:
            self._on_input(data)
        else:
            self._drop_client(conn)

    def _accept_rfc2217(self, events: int) -> None:
        conn, _ = self._rfc_listen.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(2.0)
        try:
            client = Rfc2217Client(conn, self._chip.on_lines)
        except OSError:
            conn.close()
            return
        self._rfc_clients[conn] = client
        self._sel.register(conn, selectors.EVENT_READ, functools.partial(self._on_rfc2217, client))

    def _on_rfc2217(self, client: Rfc2217Client, events: int) -> None:
        try:
            data = client.sock.recv(65536)
            data = client.decode(data) if data else None
        except OSError:
            data = None
        if data is None:
            self._drop_rfc2217(client)
        elif data:
            self._on_input(data)

    def _on_child_io(self, child: Child, events: int) -> None:
        if child.closed:
            return
        if events & selectors.EVENT_READ:
            try:
                data = os.read(child.master, 65536)
            except OSError:  # EIO: every slave fd closed, the process is gone
                data = b""
            if data:
                self._on_child_output(data)
            else:
                self._on_child_exit(child)
                return
        if events & selectors.EVENT_WRITE and child is self._child:
            self._flush_child_input()

    def _drop_client(self, conn: socket.socket) -> None:
        if conn in self._clients:
            self._clients.remove(conn)
            self._sel.unregister(conn)
        conn.close()

    def _drop_rfc2217(self, client: Rfc2217Client) -> None:
        if self._rfc_clients.pop(client.sock, None) is not None:
            self._sel.unregister(client.sock)
        client.sock.close()
        if not self._rfc_clients:  # the port closed: the adapter releases DTR and RTS (HUPCL)
            self._chip.on_lines(dtr=False, rts=False)

    # ---- output: child -> log, pty, TCP clients -------------------------------------------

    def _on_child_output(self, data: bytes) -> None:
        window = self._tail[-64:] + data
        raw_at, friendly_at = window.rfind(RAW_BANNER), window.rfind(FRIENDLY_BANNER)
        if raw_at != friendly_at:  # both -1 means neither banner
            self._raw_mode = raw_at > friendly_at
        self._tail = (self._tail + data)[-512:]
        if not self._raw_mode:
            data = self._cook(data)
        self._find_faults(data)  # before the log has them: whoever reads the line sees the fault recorded
        self.emit(data)

    def _find_faults(self, data: bytes) -> None:
        """Record each fault line completed in `data`, the next bytes of the log."""
        text = self._unfinished_line + data
        text_offset = self.log_size - len(self._unfinished_line)
        start = 0
        while True:
            end = text.find(b"\n", start)
            if end < 0:
                break
            at = text.find(FAULT_MARK, start, end)
            if at >= 0:
                message = text[at + len(FAULT_MARK):end].rstrip(b"\r").decode("utf-8", "replace")
                self._record_fault(text_offset + at, message)
            start = end + 1
        self._unfinished_line = text[start:][-MAX_FAULT_LINE:]

    def _record_fault(self, offset: int, message: str) -> None:
        with self.cond:
            self.faults.append(Fault(offset, message))
            self.cond.notify_all()
        log.warning("%s: vboard FAULT: %s", self.board_name, message)

    def _cook(self, data: bytes) -> bytes:
        """Text output at the friendly REPL with every line ending as \r\n, as a board sends it (the
        ESP32 port's stdout is "cooked"; the unix port leaves that to a terminal the child does not
        have), so a terminal on the pty does not staircase. The raw REPL is passed through as is: it
        carries mpremote's byte-exact traffic."""
        cooked = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._ended_cr and cooked.startswith(b"\r\n") and not data.startswith(b"\r"):
            cooked = cooked[1:]  # the \r came at the end of the previous chunk
        self._ended_cr = data.endswith(b"\r")
        return cooked

    def emit(self, data: bytes) -> None:
        """What the board prints: to the log, the console callback and every client (ChipHost too)."""
        self._log.write(data)
        self._log.flush()
        if self._on_output and not self._raw_mode:  # a raw-REPL session is its client's alone (see above)
            try:
                self._on_output(data)
            except Exception:  # a broken echo (closed stdout) must not take the board down
                log.exception("vboard %s: output callback failed; disabling it", self.board_name)
                self._on_output = None
        self.send_raw(data)
        with self.cond:
            self.log_size += len(data)
            self.cond.notify_all()

    def send_raw(self, data: bytes) -> None:
        """To every client, not to the log: emit() for what the board prints, this alone for the
        download-mode protocol (binary, and megabytes when esptool reads the flash)."""
        self._write_host_pty(data)
        for conn in list(self._clients):
            try:
                conn.sendall(data)
            except OSError:  # a client that stopped reading is dropped, like a closed terminal
                self._drop_client(conn)
        if self._rfc_clients:
            for client in list(self._rfc_clients.values()):
                try:
                    client.sock.sendall(client.encode(data))
                except OSError:
                    self._drop_rfc2217(client)

    def _write_host_pty(self, data: bytes) -> None:
        # Nobody may have the pty open: like a UART with nothing attached, old bytes are lost
        # rather than blocking the board. In download mode someone is talking to the ROM (esptool,
        # reading megabytes of flash with up to 256 KiB in flight), and a full pty means that reader
        # is slow, not absent: wait for it, as a USB-serial adapter's host buffers would.
        view = memoryview(data)
        for _ in range(2):
            try:
                while view:
                    try:
                        view = view[os.write(self.host_master, view):]
                    except BlockingIOError:
                        if self.chip != "download" or not select.select([], [self.host_master], [],
                                                                         DOWNLOAD_READER_PATIENCE_S)[1]:
                            raise
                return
            except BlockingIOError:
                termios.tcflush(self.host_slave, termios.TCIFLUSH)
            except OSError:
                return

    # ---- input: clients -> child -------------------------------------------------------------

    def _on_input(self, data: bytes) -> None:
        if self.chip != "app":
            self._chip.feed(data)  # download mode reads it; in reset or a boot loop nobody does
            return
        child = self._child
        if child is None:
            return  # rebooting: a UART drops what arrives meanwhile
        start = 0
        for i, byte in enumerate(data):
            if byte == 0x03 and child.ready and self._code_running(child):
                child.pending += data[start:i]
                start = i + 1
                self._last_sigint = time.monotonic()
                interrupt_main_thread(child.proc.pid)
                if self.pacer is not None:  # a stopped process handles no signal until continued
                    self.pacer.interrupt(child.proc.pid)
        child.pending += data[start:]
        if len(child.pending) > MAX_PENDING_INPUT:
            del child.pending[:-MAX_PENDING_INPUT]
        self._flush_child_input()

    def _code_running(self, child: Child) -> bool:
        if time.monotonic() - self._last_sigint < SIGINT_COALESCE_S:
            return False
        try:
            with open(f"/proc/{child.proc.pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"SigCgt:"):
                        return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
        except OSError:
            pass
        return False

    def _flush_child_input(self) -> None:
        child = self._child
        if child is None:
            return
        paced = False
        while child.pending:
            allowed = self._uart_allowance(len(child.pending))
            if not allowed:
                paced = True  # the line is busy until _rx_due: the run loop comes back then
                break
            try:
                n = os.write(child.master, child.pending[:allowed])
            except BlockingIOError:
                n = 0
            except OSError:
                child.pending.clear()
                break
            if self._byte_s is not None:
                self._rx_line_free -= (allowed - n) * self._byte_s  # what the pty did not take
            if not n:
                break
            del child.pending[:n]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if child.pending and not paced else 0)
        self._sel.modify(child.master, events, child.on_io)

    def _uart_allowance(self, want: int) -> int:
        """How many of `want` bytes the UART toward the board carries now (all without a baud rate); 0 while
        the line is busy, with _rx_due set to when it is free again. Bytes go in slices of UART_SLICE_S."""
        if self._byte_s is None:
            return want
        now = time.monotonic()
        if self._rx_line_free > now + UART_SLICE_S:
            self._rx_due = self._rx_line_free - UART_SLICE_S
            return 0
        n = min(want, max(1, int(UART_SLICE_S / self._byte_s)))
        self._rx_line_free = max(self._rx_line_free, now) + n * self._byte_s
        return n

    # ---- the MicroPython process -------------------------------------------------------------

    def _spawn(self, boot_mode: str) -> None:
        master, slave = os.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[0] = 0                                   # iflag: no CR/NL mapping, no flow control
        attrs[1] = 0                                   # oflag: bytes go out as written
        attrs[2] = attrs[2] | termios.CS8 | termios.CREAD
        attrs[3] = 0                                   # lflag: no echo, no ICANON, no ISIG
        attrs[6][termios.VMIN] = 1
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.gen += 1
        env = dict(self._env, VBOARD_GEN=str(self.gen), VBOARD_BOOT=boot_mode,
                   VBOARD_RESET_CAUSE=str(self._reset_cause), VBOARD_PARENT=str(os.getpid()),
                   FAKETIME=self._rtc_offset())
        try:
            self._ready_file.unlink()
        except FileNotFoundError:
            pass
        try:
            proc = subprocess.Popen(self._argv, stdin=slave, stdout=slave, stderr=slave,
                                    env=env, cwd=self._state_dir, start_new_session=True)
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        child = Child(proc=proc, master=master, gen=self.gen)
        child.on_io = functools.partial(self._on_child_io, child)
        if self.pacer is not None:
            self.pacer.follow(proc.pid, ready=lambda gen=self.gen: self._ready_file_says(gen))
        self.pids.append(proc.pid)
        self._child = child
        self._tail = b""
        self._unfinished_line = b""
        self._sel.register(master, selectors.EVENT_READ, child.on_io)
        log.debug("vboard %s: MicroPython pid %d (gen %d, boot %s)", self.board_name, proc.pid,
                  self.gen, boot_mode)

    def _rtc_offset(self) -> str:
        """The clock offset libfaketime applies to this boot: what the last boot's RTC was set to
        (sim/vb_machine.py writes it), or, after a power-on, the offset that makes the clock read
        2000-01-01 00:00:00 now."""
        rtc = self._state_dir / "rtc"
        try:
            return rtc.read_text()
        except FileNotFoundError:
            offset = "%+d" % (EPOCH_2000 - int(time.time()))
            rtc.write_text(offset)
            return offset

    def _power_off_rtc(self) -> None:
        try:
            (self._state_dir / "rtc").unlink()
        except FileNotFoundError:
            pass

    def _ready_file_says(self, gen: int) -> bool:
        try:
            return self._ready_file.read_text() == str(gen)
        except OSError:
            return False

    def _forget_pacing(self, child: Child) -> None:
        """Before a process is killed or reaped: the pacer continues it if stopped and never reads
        its clock or signals it again."""
        if self.pacer is not None:
            self.pacer.forget(child.proc.pid)

    def _check_ready(self) -> None:
        child = self._child
        if child is None or child.ready:
            return
        try:
            ready = self._ready_file.read_text() == str(child.gen)
        except OSError:
            return
        if ready:
            child.ready = True
            with self.cond:
                self.ready_gen = child.gen
                self.rebooting = False
                self.cond.notify_all()

    def _on_child_exit(self, child: Child) -> None:
        with self.cond:
            self.rebooting = True
        self._forget_pacing(child)
        self._sel.unregister(child.master)
        os.close(child.master)
        try:
            rc = child.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            rc = child.proc.wait()
        if child is self._child:
            self._child = None
        if self._stopping:
            return
        if self.chip != "app":  # gone while the chip was reset (the kill raced with its own end)
            return
        kind, note = self._classify(rc, child)
        self._expected_kill = None
        log.debug("vboard %s: gen %d ended with %s -> %s", self.board_name, child.gen, rc, kind)
        if kind == "soft":
            if note:
                self.emit(b"\r\n[vboard] " + note.encode() + b"\r\n")
            self.emit(SOFT_REBOOT)
            self._reset_cause = SOFT_RESET
            raw = self._raw_mode
            self._spawn("boot" if raw and self._boot_mode != "none" else self._boot_mode)
            if raw:  # back into the raw REPL, where the client waits for its banner
                self._child.pending += b"\x01"
                self._flush_child_input()
            return
        self._raw_mode = False
        self._chip_reset()
        if kind == "crash":
            self._report_crash(note)
            if self.halted:
                return
            self._reset_cause = HARD_RESET  # ESP_RST_PANIC
            self.emit(SW_RESET)
        elif kind == "hard":
            self._reset_cause = HARD_RESET  # ESP_RST_SW
            self.emit(SW_RESET)
        else:  # power
            self._reset_cause = PWRON_RESET
            self._power_off_rtc()
            self.emit(POWER_ON)
        self._chip.boot_from_flash()

    def _classify(self, rc: int, child: Child):
        if self._expected_kill and rc == -signal.SIGKILL:
            return self._expected_kill, None
        if rc == -signal.SIGUSR1:
            return "hard", None
        if rc == -signal.SIGUSR2:
            return "soft", None
        if rc == -signal.SIGINT and time.monotonic() - self._last_sigint < 2.0:
            # Ctrl-C landed just as code finished and SIGINT was fatal again
            return "soft", "Ctrl-C arrived as the code finished; soft reboot"
        if rc < 0:
            return "crash", f"MicroPython process crashed: killed by {signal.Signals(-rc).name}"
        if b"FATAL: " in self._tail:
            return "crash", f"MicroPython process crashed: fatal error, exit status {rc}"
        if not child.ready:
            return "crash", f"MicroPython process exited with status {rc} while booting"
        return "soft", None

    def _report_crash(self, message: str) -> None:
        now = time.monotonic()
        self._crash_times = [t for t in self._crash_times if now - t < CRASH_WINDOW_S] + [now]
        offset = self.log_size
        self.emit(b"\r\n[vboard] " + message.encode() + b"\r\n")
        halt = len(self._crash_times) >= CRASH_LIMIT or self.ready_gen == 0
        if halt:
            reason = (f"{message} (during the first boot)" if self.ready_gen == 0 else
                      f"crashed {CRASH_LIMIT} times within {CRASH_WINDOW_S:.0f} s; not restarting")
            self.emit(b"[vboard] board halted: " + reason.encode() + b"\r\n")
        with self.cond:
            self.crashes.append(Crash(offset, message))
            if halt:
                self.halted = reason
                if self.ready_gen == 0:
                    self.startup_failure = message
            self.cond.notify_all()
        log.warning("vboard %s: %s", self.board_name, message)

    def _handle_requests(self) -> None:
        with self.cond:
            requests, self._requests = self._requests, []
        for what in requests:
            if what == "stop":
                self._stopping = True
                return
            if what in ("download", "en"):  # buttons: EN pressed, BOOT (IO0) held for "download"
                self._chip.press_en(boot_held=what == "download")
                continue
            # reset / power: restart the process; a halted board, or a chip not running
            # MicroPython, powers up again too
            child = self._child
            if child is not None:
                self._expected_kill = "hard" if what == "reset" else "power"
                self._forget_pacing(child)
                child.proc.kill()
            else:
                with self.cond:
                    self.halted = None
                self._crash_times.clear()
                self._raw_mode = False
                if not self._chip.restart():
                    continue
                self._chip_reset()
                self._reset_cause = PWRON_RESET if what == "power" else HARD_RESET
                if what == "power":
                    self._power_off_rtc()
                self.emit(POWER_ON if what == "power" else SW_RESET)
                self._chip.boot_from_flash()

    # ---- what the chip asks of the board (chip.ChipHost) -------------------------------------

    def start_micropython(self) -> None:
        self._spawn(self._boot_mode)

    def hold_in_reset(self) -> None:
        """EN low: the CPU stops where it is, the RTC and the timers restart; a halted board may run again."""
        self._stop_child()
        self._chip_reset()
        self._raw_mode = False
        self._expected_kill = None
        self._reset_cause = PWRON_RESET    # EN is the chip's power-on reset; the RTC restarts too
        self._power_off_rtc()
        with self.cond:
            self.halted = None if self.halted != "stopped" else self.halted
        self._crash_times.clear()

    def chip_changed(self, state: str) -> None:
        if state != "app":    # called with cond held
            self.rebooting = True

    def _stop_child(self) -> None:
        """Kill the MicroPython process now, as a chip reset stops the CPU (unsent output is lost)."""
        child, self._child = self._child, None
        if child is None:
            return
        child.closed = True
        try:
            self._sel.unregister(child.master)
        except (KeyError, ValueError):
            pass
        self._forget_pacing(child)
        child.proc.kill()
        try:
            child.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        os.close(child.master)

    # ---- the task watchdog (sim/vb_machine.py WDT) ------------------------------------------

    def _chip_reset(self) -> None:
        """What every reset but a soft one does here: the chip's timers restart, the watchdog's too."""
        self._chip_started = time.monotonic()
        self._wdt_file.unlink(missing_ok=True)

    def _watchdog(self):
        """(seconds since the last feed, timeout in seconds) while MicroPython runs with a watchdog, else None."""
        if self.chip != "app" or self._child is None:
            return None
        try:
            fed = self._wdt_file.stat().st_mtime
            if self._wdt_seen[0] != fed:  # read the timeout only when the file changed: this runs at every wakeup
                self._wdt_seen = (fed, int(self._wdt_file.read_text()) / 1000)
        except (OSError, ValueError):  # none, or a feed being written this very moment
            return None
        return time.time() - fed, self._wdt_seen[1]

    def _watchdog_left(self) -> Optional[float]:
        state = self._watchdog()
        return None if state is None else state[1] - state[0]

    def _check_watchdog(self) -> None:
        state = self._watchdog()
        if state is None or state[0] < state[1]:
            return
        starved, timeout = state
        log.warning("vboard %s: task watchdog not fed for %.1f s (timeout %.1f s): resetting",
                    self.board_name, starved, timeout)
        with self.cond:
            self.rebooting = True
        self._stop_child()  # the panic stops the CPU: what it did not print yet is lost
        self._raw_mode = False
        uptime_ms = int((time.monotonic() - self._chip_started) * 1000)
        self.emit(b"\r\n" + TASK_WDT_PANIC.format(ms=uptime_ms).encode())
        self._chip_reset()
        self._reset_cause = WDT_RESET  # ESP_RST_TASK_WDT, from the reset hint task_wdt_timeout_abort set
        with self.cond:
            self.watchdog_resets += 1
            self.cond.notify_all()
        self.emit(SW_RESET)
        self._chip.boot_from_flash()

    def _shutdown(self) -> None:
        self._stopping = True
        child, self._child = self._child, None
        if self.pacer is not None:
            self.pacer.close()  # continues what it paced
        if child is not None:
            child.proc.kill()
            child.proc.wait()
            try:
                self._sel.unregister(child.master)
            except (KeyError, ValueError):
                pass
            os.close(child.master)
        for conn in list(self._clients):
            self._drop_client(conn)
        for client in list(self._rfc_clients.values()):
            self._sel.unregister(client.sock)
            client.sock.close()
        self._rfc_clients.clear()
        if self._rfc_listen is not None:
            self._rfc_listen.close()
        if self._flash is not None:
            self._flash.close()
        with self.cond:  # request() writes to the wake pipe under cond
            wake, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), None, None
        for fd in (self.host_master, self.host_slave, *wake):
            try:
                os.close(fd)
            except OSError:
                pass
        self._tcp.close()
        self._sel.close()
        self._log.close()
        try:
            if self.pty_link.is_symlink() and os.readlink(self.pty_link) == self.pty_name:
                self.pty_link.unlink()
        except OSError:
            pass
        with self.cond:
            self._stopping = True
            if self.halted is None:
                self.halted = "stopped"
            self.cond.notify_all()
