"""The virtual board's chip below MicroPython answers the real, unmodified esptool (run from .venv/bin):
the ROM's download mode and esptool's flasher stub, reached by DTR/RTS over RFC 2217 as esptool
resets a board, a 4 MB SPI flash that persists, and boots that run MicroPython only from a valid
image, boot-looping with the ROM's or the bootloader's messages otherwise."""

import hashlib
import os
import re
import subprocess
import time

import pytest
import serial
from esp_pylib.serial_reset import classic_bootloader_reset, hard_reset, usb_jtag_bootloader_reset

from support.paths import VENV_BIN
from support.wait import wait_until
from rmkit import espimage
from rmkit.vboard import BoardError
from rmkit.vboard.rom import FLASH_SIZE

pytestmark = pytest.mark.board  # tier: virtual boards (support/tiers.py)

ESPTOOL = str(VENV_BIN / "esptool")


def esptool(port, *args, timeout=120, check=True) -> str:
    proc = subprocess.run([ESPTOOL, "--port", port, *args], capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, f"esptool {' '.join(args)} failed ({proc.returncode}):\n{out}"
    return out


def on_pty(board, *args, **kwargs) -> str:
    """esptool on the board's pty, which has no modem lines: the board must be in download mode, and
    stays there (the ROM again, also after the stub)."""
    return esptool(str(board.pty_link), "--before", "no-reset", "--after", "no-reset", *args, **kwargs)


def wait_chip(board, state: str, timeout: float = 5.0) -> None:
    wait_until(lambda: board.chip_state == state, timeout, interval=0.01, what=f"chip {state}",
               detail=lambda: f"chip {board.chip_state}; log:\n{board.read_log()[-800:]}")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Firmware files laid out as micropython.org ships ESP32_GENERIC (from 0x1000 on)."""
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for name, app in (("micropython", espimage.build_app(size=96 * 1024, version="v1.25.0")),
                      ("foreign", espimage.build_app("hello_world", "1.0", size=32 * 1024)),
                      ("bad_checksum", None)):
        if app is None:
            app = bytearray(espimage.build_app(size=32 * 1024, hash_appended=False))
            app[0x200] ^= 0xFF
        paths[name] = folder / f"{name}.bin"
        paths[name].write_bytes(espimage.build_firmware(bytes(app)))
    return paths


def test_built_images_are_valid_by_esptools_own_reader(images):
    from esptool.bin_image import LoadFirmwareImage

    data = images["micropython"].read_bytes()
    for offset in (0, 0xF000):        # the bootloader, then the app
        image = LoadFirmwareImage("esp32", data[offset:])
        assert image.checksum == image.calculate_checksum()
        assert image.stored_digest == image.calc_digest
    assert espimage.check_firmware(data)[1].app_desc["project_name"] == "micropython"


def test_esptool_over_rfc2217_resets_the_board_into_download_mode_and_back(vboard):
    """The esptool CLI as on hardware: it resets the board into download mode through DTR/RTS, detects
    the chip, reads its MAC, uploads its stub, and resets it through RTS: MicroPython runs again.
    (Writing over RFC 2217 works the same, see test_flash.py; esptool's CLI is slow there: pyserial's
    RFC 2217 client waits >= 100 ms whenever esptool changes the read timeout, about every command.)"""
    since = vboard.log_offset()
    out = esptool(vboard.rfc2217_url, "chip-id")
    assert "Detecting chip type... ESP32" in out
    assert "Chip type:          ESP32-D0WD-V3 (revision v3.0)" in out
    assert "Features:           Wi-Fi, BT, Dual Core + LP Core, 240MHz, Vref calibration in eFuse" in out
    assert "Crystal frequency:  40MHz" in out
    assert out.count(f"MAC:                {vboard.mac}") == 2      # in the chip's details and from chip-id
    assert "Stub flasher running." in out and "Hard resetting via RTS pin" in out
    log = vboard.read_log(since)
    assert ("rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\n"
            "waiting for download\r\n") in log
    vboard.wait_for_log(r"waiting for download\r\nrst:0x1 \(POWERON_RESET\),boot:0x13 \(SPI_FAST_FLASH_BOOT\)\r\n"
                        r"MicroPython", since=since)
    wait_chip(vboard, "app")
    assert vboard.exec("import sys; print(sys.platform)").strip() == "esp32"
    assert not vboard.spi_flash_path.exists()        # nothing was written


def test_esptool_erases_writes_and_verifies_and_the_board_boots_the_image(vboard, images):
    vboard.enter_download_mode()
    assert "Flash memory erased successfully" in on_pty(vboard, "erase-flash")
    out = on_pty(vboard, "write-flash", "0x1000", str(images["micropython"]))
    assert "Hash of data verified." in out
    flashed = vboard.spi_flash_path.read_bytes()
    firmware = images["micropython"].read_bytes()
    assert len(flashed) == FLASH_SIZE and flashed[0x1000:0x1000 + len(firmware)] == firmware
    assert flashed[:0x1000] == flashed[0x1000 + len(firmware):0x1000 + len(firmware) + 0x1000] == b"\xff" * 0x1000
    port = serial.serial_for_url(vboard.rfc2217_url)
    try:
        since = vboard.log_offset()
        port.dtr = False                             # pyserial opens with DTR asserted: RTS alone would not reach EN
        hard_reset(port)                             # as esptool's --after hard-reset does
    finally:
        port.close()
    vboard.wait_for_log(r"SPI_FAST_FLASH_BOOT\)\r\nMicroPython", since=since)
    wait_chip(vboard, "app")
    assert vboard.exec("print(6 * 7)").strip() == "42"


@pytest.mark.parametrize("stub", ["stub", "no-stub"])
def test_rom_and_stub_serve_every_flash_command(vboard, images, tmp_path, stub):
    flags = [] if stub == "stub" else ["--no-stub"]
    vboard.enter_download_mode()
    assert "waiting for download" in vboard.read_log()

    assert "Manufacturer: ef\nDevice: 4016\nDetected flash size: 4MB" in on_pty(vboard, *flags, "flash-id")
    assert f"MAC:                {vboard.mac}" in on_pty(vboard, *flags, "read-mac")
    assert "WARNING: ESP32 has no chip ID. Reading MAC address instead." in on_pty(vboard, *flags, "chip-id")

    firmware = images["micropython"]
    out = on_pty(vboard, *flags, "write-flash", "-z", "0x1000", str(firmware))
    assert "Hash of data verified." in out and ("Stub flasher running." in out) == (stub == "stub")
    assert "Verification successful (digest matched)." in on_pty(vboard, *flags, "verify-flash", "0x1000", str(firmware))
    back = tmp_path / "back.bin"
    on_pty(vboard, *flags, "read-flash", "0x1000", "0x3000", str(back))
    assert back.read_bytes() == firmware.read_bytes()[:0x3000]

    on_pty(vboard, *flags, "erase-region", "0x10000", "0x1000")      # the app's header: gone
    out = on_pty(vboard, *flags, "verify-flash", "0x1000", str(firmware), check=False)
    assert "Verification failed (digest mismatch)." in out

    # uncompressed too, at an address that is not sector-aligned (the ROM pads with 0xFF)
    on_pty(vboard, *flags, "write-flash", "-u", "0x1000", str(firmware))
    on_pty(vboard, *flags, "write-flash", "0x1ff010", str(firmware.with_name("foreign.bin")))
    raw = vboard.spi_flash_path.read_bytes()
    assert raw[0x1ff010:0x1ff010 + 16] == firmware.with_name("foreign.bin").read_bytes()[:16]

    vboard.power_cut()      # IO0 no longer held: boots the image
    assert vboard.exec("print(6 * 7)").strip() == "42"


def test_erase_flash_needs_the_stub_as_on_an_esp32(vboard):
    vboard.enter_download_mode()
    out = on_pty(vboard, "--no-stub", "erase-flash", check=False)
    assert "ESP32 ROM does not support function erase_flash" in out
    assert "Flash memory erased successfully" in on_pty(vboard, "erase-flash")
    assert vboard.spi_flash_path.read_bytes() == b"\xff" * FLASH_SIZE


def test_an_erased_board_boot_loops_with_the_roms_message_at_a_realistic_rate(vboard_factory):
    board = vboard_factory()
    board.enter_download_mode()
    on_pty(board, "erase-flash")
    since = board.log_offset()
    with pytest.raises(BoardError, match=r"did not boot MicroPython: boot loop: no bootloader at 0x1000 "
                                         r"\(invalid header: 0xffffffff\)"):
        board.power_cut()
    header = "invalid header: 0xffffffff\r\n"
    rtc_wdt_reset = "rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n" + header
    first = board.read_log(since).count(header)
    cpu, started = time.process_time(), time.monotonic()
    # 20 more lines, and the RTC watchdog's reset that follows every 20th (the ROM's loop, see ROM_LINES_PER_RESET)
    wait_until(lambda: board.read_log(since).count(header) >= first + 20, 10, interval=0.1,
               what="20 more boot-loop lines")
    took, cpu = time.monotonic() - started, time.process_time() - cpu
    wait_until(lambda: rtc_wdt_reset in board.read_log(since), 5, interval=0.1, what="the RTC watchdog's reset")
    log = board.read_log(since)
    assert log.startswith("rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n" + header)
    assert 0.6 <= took <= 3, f"20 lines in {took:.2f} s, where an ESP32 prints ~20 a second"
    assert cpu < took / 3, f"the boot loop used {cpu:.2f} s of CPU in {took:.2f} s"
    assert board.chip_state == "bootloop" and "MicroPython" not in log
    with pytest.raises(BoardError, match="not running MicroPython: boot loop"):
        board.exec("print(1)", timeout=2)
    # it stays erased across a restart of the board (the raw flash is a file next to the flash dir)
    board.stop()
    board.start()
    assert board.chip_state == "bootloop"
    board.wait_for_log(r"invalid header: 0xffffffff")


def test_bad_apps_boot_loop_in_the_bootloader_and_a_foreign_app_is_not_run(vboard, images):
    vboard.enter_download_mode()
    on_pty(vboard, "write-flash", "0x1000", str(images["bad_checksum"]))
    since = vboard.log_offset()
    with pytest.raises(BoardError, match=r"the app at 0x10000 is invalid: Checksum failed"):
        vboard.power_cut()
    match = vboard.wait_for_log(r"rst:0x3 \(SW_RESET\),boot:0x13 \(SPI_FAST_FLASH_BOOT\)\r\n", since=since)
    log = vboard.read_log(since)[:match.end()]
    assert re.search(r"E \(\d+\) esp_image: Checksum failed\. Calculated 0x[0-9a-f]{2} read 0x[0-9a-f]{2}\r\n"
                     r"E \(\d+\) boot: Factory app partition is not bootable\r\n", log), log

    vboard.enter_download_mode()
    on_pty(vboard, "erase-region", "0x8000", "0x1000")       # no partition table
    since = vboard.log_offset()
    with pytest.raises(BoardError, match="no valid partition table at 0x8000"):
        vboard.power_cut()
    vboard.wait_for_log(r"E \(\d+\) boot: load partition table error!", since=since)

    vboard.enter_download_mode()
    on_pty(vboard, "write-flash", "0x1000", str(images["foreign"]))
    since = vboard.log_offset()
    with pytest.raises(BoardError, match="the app at 0x10000 is 'hello_world', not MicroPython"):
        vboard.power_cut()
    vboard.wait_for_log(r"\[vboard\] the app at 0x10000 is 'hello_world', not MicroPython", since=since)
    assert vboard.chip_state == "idle"


def test_reset_lines_over_rfc2217_as_a_devkits_auto_reset_circuit(vboard):
    """DTR/RTS through the two transistors of an ESP32 DevKit: esptool's classic sequence gives
    download mode, an EN pulse with IO0 high the app, RTS held keeps the chip in reset (MicroPython
    stopped), and the USB-Serial/JTAG sequence does not reach download mode through this circuit."""
    port = serial.serial_for_url(vboard.rfc2217_url)
    try:
        assert vboard.chip_state == "app"
        pid = vboard.pids[-1]
        classic_bootloader_reset(port)
        wait_chip(vboard, "download")
        assert vboard.read_log().endswith("waiting for download\r\n")
        with pytest.raises(ProcessLookupError):   # the MicroPython process is stopped in download mode
            os.kill(pid, 0)
        since = vboard.log_offset()
        hard_reset(port)
        wait_chip(vboard, "app")
        vboard.wait_for_log(r"SPI_FAST_FLASH_BOOT\)\r\nMicroPython", since=since)
        port.rts = True                              # EN low
        wait_chip(vboard, "reset")
        port.rts = False
        wait_chip(vboard, "app")
        since = vboard.log_offset()
        usb_jtag_bootloader_reset(port)
        # the lines are taken in order: once an EN pulse sent after it has reset the chip, the sequence
        # has been seen, and it must not have reached download mode on the way
        port.rts = True
        wait_chip(vboard, "reset")
        port.rts = False
        wait_chip(vboard, "app")
        assert "waiting for download" not in vboard.read_log(since)
    finally:
        port.close()
    assert vboard.exec("print('back')").strip() == "back"


def test_usb_serial_jtag_reset_circuit(vboard_factory):
    board = vboard_factory(reset_circuit="usb-jtag")
    port = serial.serial_for_url(board.rfc2217_url)
    try:
        usb_jtag_bootloader_reset(port)
        wait_chip(board, "download")
        hard_reset(port, hold_delay=0.1)
        wait_chip(board, "app")
    finally:
        port.close()


def test_the_factory_flash_reads_as_micropython_until_written(vboard, images):
    """A board whose raw flash was never written boots as today and reads as MicroPython's layout."""
    assert not vboard.spi_flash_path.exists()
    vboard.enter_download_mode()
    out = on_pty(vboard, "read-flash", "0x1000", "0x20", str(vboard.flash_dir.parent / "head.bin"))
    assert "Read 32 bytes" in out
    assert (vboard.flash_dir.parent / "head.bin").read_bytes()[0] == 0xE9
    assert not vboard.spi_flash_path.exists()       # reading writes nothing
    vboard.power_cut()
    assert vboard.exec("print(1)").strip() == "1"


def test_md5_of_a_region_matches_hashlib(vboard, images):
    """SPI_FLASH_MD5 of both loaders over the whole written image (what verify-flash compares)."""
    vboard.enter_download_mode()
    firmware = images["micropython"].read_bytes()
    on_pty(vboard, "write-flash", "0x1000", str(images["micropython"]))
    for flags in ([], ["--no-stub"]):
        out = on_pty(vboard, *flags, "verify-flash", "0x1000", str(images["micropython"]))
        assert "digest matched" in out
    assert hashlib.md5(vboard.spi_flash_path.read_bytes()[0x1000:0x1000 + len(firmware)]).digest() == \
        hashlib.md5(firmware).digest()


def test_a_slow_reader_of_a_flash_read_loses_nothing(vboard, images):
    """esptool's stub streams a flash read with up to 256 KiB in flight; a reader slower than that (a busy
    host) must get every byte late, not lose some, as through a USB-serial adapter's host buffers."""
    import esptool

    vboard.enter_download_mode()
    on_pty(vboard, "write-flash", "0x1000", str(images["micropython"]))
    with serial.Serial(str(vboard.pty_link), 115200, timeout=5) as port:
        esp = esptool.ESP32ROM(port)
        esp.connect("no-reset")
        esp = esp.run_stub()
        read = port.read

        def slow_read(size=1):
            time.sleep(0.002)  # ~500 reads a second, far below the stub's pace
            return read(size)

        port.read = slow_read
        data = esp.read_flash(0x1000, 0x40000)
    assert data == vboard.spi_flash_path.read_bytes()[0x1000:0x41000]
