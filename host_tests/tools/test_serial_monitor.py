"""Serial ports of real boards: found by USB VID/PID when not named (a list and a request to choose
when there are several), opened without a reset, and each failure one line naming the fix;
`rmkit monitor` timestamps a board's output and `rmkit repl --port` refuses a port it cannot open."""

from __future__ import annotations

import errno
import re
import subprocess
import time
from types import SimpleNamespace

import pytest

from rmkit.errors import UserError
from rmkit.serialport import describe_open_error, open_port, resolve_port
from support.paths import VENV_BIN

pytestmark = pytest.mark.board  # tier: virtual boards (support/tiers.py)

RMKIT = str(VENV_BIN / "rmkit")


def usb(device, vid, pid, serial_number=None):
    return SimpleNamespace(device=device, vid=vid, pid=pid, serial_number=serial_number)


def test_the_one_esp32_bridge_on_usb_is_found_and_other_devices_are_ignored():
    ports = [usb("/dev/ttyS0", None, None), usb("/dev/ttyACM3", 0x2341, 0x0043),  # a UART, an Arduino
             usb("/dev/ttyUSB1", 0x10C4, 0xEA60)]
    assert resolve_port(None, ports=ports) == "/dev/ttyUSB1"
    assert resolve_port("auto", ports=ports) == "/dev/ttyUSB1"
    assert resolve_port("/dev/ttyUSB7", ports=ports) == "/dev/ttyUSB7"  # named: taken as given


def test_no_board_and_several_boards_are_one_line_each():
    with pytest.raises(UserError, match=r"no ESP32 board found on USB .*CP210x.*: plug one in, or name its serial port"):
        resolve_port(None, ports=[usb("/dev/ttyS0", None, None)])
    several = [usb("/dev/ttyUSB0", 0x1A86, 0x7523), usb("/dev/ttyACM0", 0x303A, 0x1001, "F4:12:FA:00:11:22")]
    with pytest.raises(UserError) as info:
        resolve_port(None, ports=several)
    message = str(info.value)
    assert "2 ESP32 boards found" in message and "choose one with --port (make PORT=)" in message
    assert "/dev/ttyUSB0 (WCH CH340)" in message and "/dev/ttyACM0 (Espressif USB-Serial/JTAG, serial F4:12" in message


def test_opening_a_missing_port_says_so():
    with pytest.raises(UserError, match=r"no serial port /dev/ttyNOSUCH0: check the cable"):
        open_port("/dev/ttyNOSUCH0")


@pytest.mark.parametrize("code, expected", [
    (errno.EACCES, "sudo usermod -aG dialout $USER"),
    (errno.EBUSY, "in use by another program"),
])
def test_permission_and_busy_name_the_fix(code, expected):
    # as root (CI) a permission error cannot be provoked: the message is checked from the error itself
    assert expected in describe_open_error("/dev/ttyUSB0", OSError(code, "x"))


def test_monitor_prints_a_virtual_boards_lines_with_timestamps(vboard):
    monitor = subprocess.Popen([RMKIT, "monitor", "--port", vboard.url], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert monitor.stderr.readline().startswith("monitor: "), "rmkit monitor did not connect"  # connected
        vboard.exec("print('monitored', 6 * 7)")
        deadline, seen = time.monotonic() + 10, ""
        while "monitored 42" not in seen:
            assert time.monotonic() < deadline, seen
            seen += monitor.stdout.readline()
    finally:
        monitor.terminate()
        monitor.wait(timeout=10)
    line = next(l for l in seen.splitlines() if "monitored 42" in l)
    assert re.match(r"^\[\d\d:\d\d:\d\d\.\d{3}\] ", line), line


def test_monitor_and_repl_on_a_port_that_does_not_exist_are_one_line():
    for args in (["monitor", "--port", "/dev/ttyNOSUCH0"], ["repl", "--port", "/dev/ttyNOSUCH0"]):
        result = subprocess.run([RMKIT, *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [f"rmkit {args[0]}: no serial port /dev/ttyNOSUCH0: check the "
                                                      f"cable, or list ports with `{VENV_BIN / 'python'} -m "
                                                      "serial.tools.list_ports`"]


@pytest.mark.parametrize("args", [
    ["flash", "--port", "auto", "image.bin"],
    ["flash", "image.bin"],  # auto is the default
    ["deploy", "--port", "auto"],
    ["factory", "--port", "auto", "--node-id", "N1", "--pop", "p"],
    ["monitor"],
    ["repl", "--port", "auto"],
])
def test_every_serial_command_finds_the_board_on_usb_or_says_how_to_name_it(args, tmp_path):
    # this machine has no ESP32 on USB: each command says so in one line and names its --port
    if args[0] == "flash":
        (tmp_path / "image.bin").write_bytes(b"\xe9" + bytes(4095))
    if args[0] == "factory":
        subprocess.run([RMKIT, "pki", "--dir", str(tmp_path / "pki"), "init"], check=True, capture_output=True)
        args = args + ["--pki-dir", str(tmp_path / "pki")]
    result = subprocess.run([RMKIT, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rmkit {args[0]}: no ESP32 board found on USB"), result.stderr
    assert "--port" in lines[0]
