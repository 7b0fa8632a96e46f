"""`rmkit flash` and `make flash`: esptool writes a MicroPython image at the chip's offset and verifies
it, progress shown; each way it can fail is one line (`rmkit flash: ...`, exit 2, no traceback), and
an interrupted write leaves a board the next flash still brings back."""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from support.needs import need_command

from support.paths import REPO_ROOT, VENV_BIN
from support.wait import wait_until
from rmkit import espimage

pytestmark = pytest.mark.board  # tier: virtual boards (support/tiers.py)

RMKIT = str(VENV_BIN / "rmkit")


def rmkit_flash(*args, timeout=120, env=None, preexec=None):
    return subprocess.run([RMKIT, "flash", *args], capture_output=True, text=True, timeout=timeout, env=env)


def one_line_error(proc, pattern: str) -> str:
    """Exit 2 and one `rmkit flash: ...` line, last, after whatever esptool itself warned about."""
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Aborted" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    ours = [line for line in lines if line.startswith("rmkit flash: ")]
    assert len(ours) == 1 and lines[-1] == ours[0], proc.stderr
    assert re.search(pattern, ours[0]), ours[0]
    return ours[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flash-images")
    firmware = espimage.build_firmware(espimage.build_app(size=96 * 1024, version="v1.25.0"))
    big = espimage.build_firmware(espimage.build_app(size=1900 * 1024, version="v1.26.0", seed=7))
    s3_app = espimage.build_image([(0x3C000020, espimage.app_desc("micropython", "v1.25.0"))], 0x40370000, chip_id=9)
    corrupt = bytearray(firmware)
    corrupt[0xF000 + 0x400] ^= 0x55      # two bytes of the app: its checksum still matches, its SHA-256 not
    corrupt[0xF000 + 0x401] ^= 0x55
    paths = {"firmware": firmware, "big": big, "s3": s3_app, "truncated": firmware[:len(firmware) // 2],
             "corrupt": bytes(corrupt), "junk": b"MZ\x90\x00" + bytes(100)}
    for name, data in paths.items():
        paths[name] = folder / f"{name}.bin"
        paths[name].write_bytes(data)
    return paths


def test_flash_a_virtual_board_over_rfc2217(vboard, images):
    proc = rmkit_flash("--port", vboard.rfc2217_url, "--erase", str(images["firmware"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith(f"flash: MicroPython v1.25.0 for ESP32 ({images['firmware'].stat().st_size} bytes) -> "
                          f"{vboard.rfc2217_url} at 0x1000, 460800 baud, whole chip erased first\n")
    assert f"MAC:                {vboard.mac}" in out
    assert "Flash memory erased successfully" in out
    assert re.search(r"Writing at 0x000[0-9a-f]{5} .* 100\.0%", out), out       # progress lines
    assert "Hash of data verified." in out
    assert out.rstrip().endswith("flash: done, MicroPython v1.25.0 written and verified (MD5); the board was reset "
                                 "and boots it")
    assert vboard.exec("import sys; print(sys.platform)").strip() == "esp32"
    assert vboard.spi_flash_path.read_bytes()[0x1000:0x1000 + 32] == images["firmware"].read_bytes()[:32]


def test_flash_through_the_rom_only_at_another_baud(vboard, images):
    proc = rmkit_flash("--port", vboard.rfc2217_url, "--no-stub", "--baud", "115200", str(images["firmware"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Stub flasher running" not in proc.stdout and "Changing baud rate" not in proc.stdout
    assert "115200 baud" in proc.stdout.splitlines()[0] and "Hash of data verified." in proc.stdout
    assert vboard.exec("print(2 + 2)").strip() == "4"


def test_an_interrupted_flash_leaves_a_board_the_next_flash_brings_back(vboard, images):
    proc = subprocess.Popen([RMKIT, "flash", "--port", vboard.rfc2217_url, str(images["big"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    for line in proc.stdout:
        seen += line
        if "Writing at" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=60)
    seen += rest
    assert "Hash of data verified" not in seen, "the write finished before the interrupt"
    one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, seen, err),
                   r"interrupted while esptool was working on rfc2217://.*: the board's flash may hold half an image "
                   r"and not boot; run the same flash again")
    # half an image: the board does not run MicroPython (esptool's hard reset after the interrupt, or
    # still in download mode)
    wait_until(lambda: vboard.chip_state != "app", 5, interval=0.05, what="the chip to leave the app")
    assert vboard.chip_state in ("bootloop", "download"), vboard.chip_state
    proc = rmkit_flash("--port", vboard.rfc2217_url, str(images["big"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert vboard.exec("print('back')").strip() == "back"


def test_no_such_port_and_not_a_serial_port(images, tmp_path):
    one_line_error(rmkit_flash("--port", "/dev/ttyUSB97", str(images["firmware"])),
                   r"no such port /dev/ttyUSB97: is the board plugged in, with a data \(not charge-only\) cable\? "
                   r"Serial ports present: ")
    one_line_error(rmkit_flash("--port", str(images["firmware"]), str(images["firmware"])), r"is not a serial device")
    one_line_error(rmkit_flash("--port", "5555", str(images["firmware"])),
                   r"port 5555 looks like a TCP port number: give the board's serial device")
    one_line_error(rmkit_flash("--port", "rfc2217://127.0.0.1:1", str(images["firmware"])),
                   r"nothing answers at rfc2217://127.0.0.1:1: is the virtual board running")


def test_permission_denied_names_the_usual_fix(images):
    master, slave = os.openpty()
    shared = Path(tempfile.mkdtemp(prefix="rmkit-flash-perm-"))   # readable by the user the test runs as
    try:
        port = os.ttyname(slave)
        os.chmod(port, 0o600)
        shared.chmod(0o755)
        firmware = shared / "firmware.bin"
        shutil.copyfile(images["firmware"], firmware)
        firmware.chmod(0o644)
        env = dict(os.environ, HOME=str(shared))
        argv = [RMKIT, "flash", "--port", port, str(firmware)]
        if os.geteuid() == 0:
            # root opens anything through CAP_DAC_OVERRIDE: give the port to nobody and drop that capability
            # (running as nobody instead would also need the checkout readable by nobody, which a private
            # temporary directory is not)
            need_command("setpriv", "util-linux")  # as root, the test drops a capability with it
            os.chown(port, 65534, 65534)
            argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] + argv
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        one_line_error(proc, rf"permission denied on {re.escape(port)}: add yourself to its group \(usually "
                             r"dialout: `sudo usermod -aG dialout \$USER`, then log in again\) or add a udev rule")
    finally:
        os.close(slave)
        os.close(master)
        shutil.rmtree(shared, ignore_errors=True)


def test_no_chip_answering(images):
    master, slave = os.openpty()     # a serial port with nothing behind it
    try:
        started = time.monotonic()
        proc = rmkit_flash("--port", os.ttyname(slave), "--connect-attempts", "1", str(images["firmware"]))
        one_line_error(proc, r"no ESP32 answered on /dev/pts/\d+ \(Failed to connect to ESP32: No serial data "
                             r"received\.\): hold BOOT and press EN \(RST\) to enter download mode, check that the USB "
                             r"cable carries data, or this port is not an ESP32")
        assert time.monotonic() - started < 20
    finally:
        os.close(slave)
        os.close(master)


def test_an_image_for_another_chip(vboard, images):
    one_line_error(rmkit_flash("--port", vboard.rfc2217_url, str(images["s3"])),
                   rf"the image is built for ESP32-S3, but the board on {re.escape(vboard.rfc2217_url)} is an ESP32: "
                   r"flash firmware built for the ESP32")
    assert vboard.spi_flash_path.exists() is False       # nothing was written


def test_missing_truncated_corrupt_or_foreign_files(images, tmp_path):
    port = "/dev/ttyUSB97"   # the image is checked first: no board needed
    one_line_error(rmkit_flash("--port", port, str(tmp_path / "none.bin")), r"no firmware image at .*none\.bin$")
    one_line_error(rmkit_flash("--port", port, str(tmp_path)), r"is a directory, not a firmware image")
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    one_line_error(rmkit_flash("--port", port, str(empty)), r"empty\.bin is empty")
    one_line_error(rmkit_flash("--port", port, str(images["truncated"])),
                   r"truncated\.bin cannot be flashed: its app: image at 0x10000 is truncated: .* \(an interrupted "
                   r"download\? fetch it again\)")
    one_line_error(rmkit_flash("--port", port, str(images["corrupt"])),
                   r"corrupt\.bin cannot be flashed: its app: Image hash failed - image is corrupt")
    one_line_error(rmkit_flash("--port", port, str(images["junk"])),
                   r"junk\.bin cannot be flashed: it does not start with an ESP image header \(magic 0xE9; it starts "
                   r"4d5a9000\)")
    one_line_error(rmkit_flash("--port", port, "--erase", "--no-stub", str(images["firmware"])),
                   r"--erase needs esptool's flasher stub")


def test_chip_table_agrees_with_esptool():
    from esptool.targets import CHIP_DEFS

    for chip in espimage.CHIPS.values():
        target = CHIP_DEFS[chip.esptool_arg]
        assert (target.IMAGE_CHIP_ID, target.CHIP_NAME, target.BOOTLOADER_FLASH_OFFSET) == \
            (chip.image_id, chip.name, chip.firmware_offset)


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "-o", ".venv/.installed", "-o", "mosquitto", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_make_flash_passes_its_knobs():
    out = make("flash", "PORT=/dev/ttyUSB0", "FIRMWARE=fw.bin").stdout
    assert re.search(r"rmkit flash --port /dev/ttyUSB0 +\"fw\.bin\"", out), out
    out = make("flash", "PORT=rfc2217://127.0.0.1:4000", "FIRMWARE=fw.bin", "ERASE=1", "BAUD=921600").stdout
    assert re.search(r"rmkit flash --port rfc2217://127\.0\.0\.1:4000 --baud 921600 --erase +\"fw\.bin\"", out), out
    out = make("flash", "FIRMWARE=fw.bin").stdout  # no PORT: the one ESP32 on USB
    assert re.search(r"rmkit flash --port auto +\"fw\.bin\"", out), out
    result = make("flash", "PORT=/dev/ttyUSB0")
    assert result.returncode != 0 and "FIRMWARE=" in result.stderr, result.stderr


def test_make_flash_takes_the_readmes_pattern_and_flashes_the_one_file_it_matches(vboard, images, tmp_path):
    """README: `make flash FIRMWARE=ESP32_GENERIC-*.bin`: the Makefile passes the pattern quoted, rmkit expands it."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    shutil.copy(images["firmware"], downloads / "ESP32_GENERIC-20250415-v1.25.0.bin")
    result = subprocess.run(["make", "-s", "-o", ".venv/.installed", "-o", "mosquitto", "flash",
                             f"FIRMWARE={downloads}/ESP32_GENERIC-*.bin", f"PORT={vboard.rfc2217_url}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "flash: MicroPython v1.25.0 for ESP32" in result.stdout
    assert vboard.spi_flash_path.exists()


def test_a_pattern_matching_no_file_or_several_is_one_line(images, tmp_path):
    pattern = str(tmp_path / "ESP32_GENERIC-*.bin")
    one_line_error(rmkit_flash("--port", "/dev/ttyUSB97", pattern),
                   rf"no firmware image matches {re.escape(pattern)}: download ESP32_GENERIC from "
                   r"micropython\.org/download/ESP32_GENERIC, or give the \.bin's path$")
    for version in ("v1.24.1", "v1.25.0"):
        shutil.copy(images["firmware"], tmp_path / f"ESP32_GENERIC-{version}.bin")
    one_line_error(rmkit_flash("--port", "/dev/ttyUSB97", pattern),
                   rf"{re.escape(pattern)} matches 2 files \(.*v1\.24\.1\.bin, .*v1\.25\.0\.bin\): give the one to flash$")


def test_a_virtual_boards_socket_url_says_what_flashes_a_virtual_board(vboard, images):
    """socket:// has no DTR/RTS: not "hold BOOT and press EN", but the board's rfc2217:// URL."""
    one_line_error(rmkit_flash("--port", vboard.url, "--connect-attempts", "1", str(images["firmware"])),
                   r"a socket:// port carries no DTR/RTS, so esptool cannot reset the board into download mode; a "
                   r"virtual board is flashed at its rfc2217:// URL \(make vboard prints it\)")
    from rmkit.vboard import runtime

    runtime.record_board(vboard)  # as `make vboard` records it: then the message names its RFC 2217 port
    try:
        one_line_error(rmkit_flash("--port", vboard.url, str(images["firmware"])),
                       rf"{re.escape(vboard.url)} is virtual board {vboard.name}'s plain TCP port, which carries no "
                       rf"DTR/RTS, so esptool cannot reset it into download mode: flash it at its RFC 2217 port, "
                       rf"make flash PORT={re.escape(vboard.rfc2217_url)}$")
    finally:
        runtime.remove_record(vboard.name, os.getpid())
    assert not vboard.spi_flash_path.exists()
