"""The chip below MicroPython, as its serial port sees it: EN and IO0 through the board's reset circuit,
the ROM's download mode, and what a boot from flash finds.

DTR/RTS from RFC 2217 clients (and the EN and BOOT buttons) reach EN and IO0. EN low holds the chip in
reset; EN high with IO0 low starts the ROM's download mode, which answers esptool until it resets the
chip or leaves for the app; every boot from flash first checks the image there and, when it is no
MicroPython, prints the ROM's or the bootloader's messages in a loop (timed, never a busy loop) instead
of starting MicroPython.

Plain state and one timer: the supervisor (supervisor.py) owns the I/O, the clock's loop and the
MicroPython process, calls in when lines change, bytes arrive or the timer is due, and is told through
the ChipHost callbacks what the chip prints and when MicroPython starts or stops. The protocol and the
image checks are rom.py's.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional, Protocol

from rmkit.vboard.rom import STRAP_WINDOW_S, Boot, Loader, ResetLines, SpiFlash, boot_from

POWER_ON = b"rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
DOWNLOAD_BOOT = b"rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\nwaiting for download\r\n"
DOWNLOAD_REBOOT = b"rst:0xc (SW_CPU_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\nwaiting for download\r\n"
RTCWDT_RESET = b"rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
SYSTEM_RESET = b"rst:0x3 (SW_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
# boot loops: the ROM prints "invalid header" every 50 ms until its RTC watchdog resets the chip
# (about 1 s); the bootloader prints its errors and resets at once (a boot takes about 0.3 s)
ROM_LINE_S, ROM_LINES_PER_RESET, ROM_HALT_S, BOOTLOADER_LOOP_S = 0.05, 20, 1.0, 0.3
log = logging.getLogger(__name__)


class ChipHost(Protocol):
    """What the chip needs from the board around it (the supervisor)."""

    def emit(self, data: bytes) -> None:
        """Print: to the serial log and every client."""

    def send_raw(self, data: bytes) -> None:
        """Download-mode protocol bytes: to the clients, not to the log."""

    def start_micropython(self) -> None:
        """The chip boots the MicroPython in its flash: start its process."""

    def hold_in_reset(self) -> None:
        """EN went low: stop MicroPython at once, as the CPU stops (the chip's timers and RTC reset too)."""

    def chip_changed(self, state: str) -> None:
        """`state` was just set (called with the chip's condition held)."""


class Chip:
    """The chip's state: "app" (MicroPython runs, or is about to), "reset" (EN low), "download" (the ROM's
    download mode), "bootloop" (no MicroPython in flash: the ROM or the bootloader loops), "idle" (a foreign
    app, or code esptool loaded to RAM). `rom_state` says why MicroPython is not running; `boot_attempts`
    counts boots from flash and into download mode. Public fields are read under `cond`."""

    def __init__(self, host: ChipHost, *, flash: Optional[SpiFlash], mac: bytes, reset_circuit: str,
                 cond: threading.Condition, baud: Callable[[], int], name: str):
        self._host = host
        self._flash = flash
        self._mac = bytes(mac)
        self._baud = baud                # the serial clients' baud rate, for a loader started now
        self._name = name
        self.cond = cond
        self.lines = ResetLines(reset_circuit)
        self.loader: Optional[Loader] = None
        self._timer: Optional[tuple] = None   # (when, callback)
        self._loop: Optional[dict] = None
        self._strap_window = False   # EN released, IO0 not yet seen low, window still open
        self.state = "app"
        self.rom_state: Optional[str] = None
        self.boot_attempts = 0

    # ---- what the supervisor calls ----------------------------------------------------------

    def timer_due_in(self, now: float) -> Optional[float]:
        """Seconds until the timer is due (0 if it is), None without one: how long the I/O loop may wait."""
        return None if self._timer is None else max(0.0, self._timer[0] - now)

    def run_timer(self) -> None:
        timer = self._timer
        if timer is not None and time.monotonic() >= timer[0]:
            self._timer = None
            timer[1]()

    def on_lines(self, dtr: Optional[bool] = None, rts: Optional[bool] = None) -> None:
        """DTR/RTS from an RFC 2217 client (or the port closing), through the board's reset circuit to EN and IO0."""
        lines = self.lines
        change = lines.set(dtr, rts)
        if change == "reset":
            self.enter_reset()
        elif change == "release":
            if lines.circuit == "usb-jtag" or lines.io0_low:
                self.release_reset(download=lines.usb_download if lines.circuit == "usb-jtag" else True)
            else:   # see rom.STRAP_WINDOW_S
                self._set_timer(STRAP_WINDOW_S, self._straps_latched)
                self._strap_window = True
        elif self._strap_window and lines.io0_low:
            self.cancel_timer()
            self.release_reset(download=True)

    def press_en(self, boot_held: bool) -> None:
        """The EN button, with the BOOT button held (download mode) or not; EN stays low while the serial
        adapter holds it so."""
        self.enter_reset()
        if not self.lines.in_reset:
            self.release_reset(download=boot_held or self.lines.io0_low)

    def feed(self, data: bytes) -> None:
        """Bytes from the serial clients while MicroPython does not run: the ROM's download mode reads them;
        in reset, or while the ROM or a bootloader loops, nobody does."""
        if self.state != "download":
            return
        out = self.loader.feed(data)
        if out:
            self._host.send_raw(out)
        if self.loader.event:
            self._rom_event(self.loader.event)

    def restart(self) -> bool:
        """A reset or a power cycle from outside (a power cut, or machine.reset() asked of a chip that runs
        no MicroPython): download mode and boot loops end. False if the serial adapter still holds EN low:
        the chip then stays in reset, else the caller boots it."""
        self.cancel_timer()
        self.loader = None
        if self.lines.in_reset:
            self.set_state("reset", "held in reset: the serial adapter holds EN low (RTS)", attempt=True)
            return False
        return True

    def enter_reset(self) -> None:
        self.cancel_timer()
        self.loader = None
        self._host.hold_in_reset()
        self.set_state("reset", "held in reset (EN low)")

    def release_reset(self, download: bool) -> None:
        if download:
            self._host.emit(DOWNLOAD_BOOT)
            self._start_loader()
        else:
            self._host.emit(POWER_ON)
            self.boot_from_flash()

    def boot_from_flash(self) -> None:
        """Boot from flash: MicroPython when the flash holds it, else the ROM's or the bootloader's
        boot loop (or a valid app of another project, which sits idle here)."""
        boot = boot_from(self._flash) if self._flash is not None else Boot("micropython", [], "")
        if boot.kind == "micropython":
            self.set_state("app", None, attempt=True)
            self._host.start_micropython()
            return
        log.info("vboard %s: no MicroPython to boot: %s", self._name, boot.reason)
        if boot.kind == "foreign":
            self._host.emit(f"[vboard] {boot.reason}: a virtual board runs only MicroPython; it stays here "
                            f"until reset or flashed again\r\n".encode())
            self.set_state("idle", boot.reason, attempt=True)
            return
        if boot.kind == "rom" and len(boot.lines) == 1:    # invalid header, over and over
            loop = {"every": ROM_LINE_S, "count": ROM_LINES_PER_RESET, "pause": ROM_LINE_S, "banner": RTCWDT_RESET}
        elif boot.kind == "rom":                            # the ROM stops; its watchdog resets it
            loop = {"every": 0, "count": 1, "pause": ROM_HALT_S, "banner": RTCWDT_RESET}
        else:                                               # the bootloader resets the chip itself
            loop = {"every": 0, "count": 1, "pause": BOOTLOADER_LOOP_S, "banner": SYSTEM_RESET}
        loop.update(n=0, text="".join(line + "\r\n" for line in boot.lines).encode())
        self._loop = loop
        self.set_state("bootloop", f"boot loop: {boot.reason}", attempt=True)
        self._bootloop_tick()

    def set_state(self, state: str, why: Optional[str], attempt: bool = False) -> None:
        with self.cond:
            self.state = state
            self.rom_state = None if state == "app" else why
            if attempt:
                self.boot_attempts += 1
            self._host.chip_changed(state)
            self.cond.notify_all()

    def cancel_timer(self) -> None:
        self._timer = None
        self._loop = None
        self._strap_window = False

    # ---- inside ----------------------------------------------------------------------------

    def _set_timer(self, delay: float, callback) -> None:
        self._timer = (time.monotonic() + delay, callback)

    def _straps_latched(self) -> None:
        self._strap_window = False
        self.release_reset(download=False)

    def _start_loader(self) -> None:
        self.loader = Loader(self._flash, self._mac, baud=self._baud())
        self.set_state("download", "in the ROM's download mode (IO0 was low at reset): waiting for esptool",
                       attempt=True)

    def _rom_event(self, event: str) -> None:
        self.loader = None
        if event == "reboot":      # a CPU reset keeps the latched straps: download mode again
            self._host.emit(DOWNLOAD_REBOOT)
            self._start_loader()
        elif event == "run":       # the ROM leaves for the app in flash
            self.boot_from_flash()
        else:                      # "ram": code loaded to RAM runs; nothing here can run it
            self.set_state("idle", "running code esptool loaded to RAM, which a virtual board cannot run")

    def _bootloop_tick(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if loop["n"] == loop["count"]:
            self._host.emit(loop["banner"])
            loop["n"] = 0
        self._host.emit(loop["text"])
        loop["n"] += 1
        self._set_timer(loop["every"] if loop["n"] < loop["count"] else loop["pause"], self._bootloop_tick)
