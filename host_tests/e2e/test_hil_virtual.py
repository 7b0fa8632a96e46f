"""The hardware-in-the-loop run (host_tests/hil/) against a virtual board, in `make test`: the HIL run (a
pytest process of its own) gets what it would get for a board on a desk, its serial URL, its SoftAP
address and the Wi-Fi to join, and nothing else. So everything it does goes
through the serial port (flash, deploy, factory data, resets, the REPL factory reset) and the network
(provisioning, broker, SNTP, cloud), exactly as on hardware.

The board starts as one fresh from the factory with nothing on it: an erased chip (it boot-loops, no
MicroPython) and an empty filesystem. Its serial port is its rfc2217:// URL, which carries DTR/RTS, so
the run's `rmkit flash` (--firmware) resets it into download mode and writes MicroPython as on a
real board; then deploy, factory data and the scenarios.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rmkit import espimage
from rmkit.vboard import VirtualBoard
from rmkit.vboard.rom import FLASH_SIZE

from support import paths
from support.fixtures_vboard import write_air

RUN_LIMIT_S = 170.0


def collected(args: list) -> int:
    """How many tests pytest collects from `args` (with a --board: without one the HIL tests are deselected;
    collecting opens no port)."""
    board = ["--board", "rfc2217://127.0.0.1:1", "--wifi-ssid", "-", "--wifi-pass", "-", "--broker-host", "127.0.0.1"]
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *board,
                             *args],
                            cwd=paths.HOST_TESTS, capture_output=True, text=True, env=_clean_env())
    match = re.search(r"^(\d+)(?:/\d+)? tests? collected", result.stdout, re.M)  # "2/5 tests collected" with -k
    assert match, result.stdout + result.stderr
    return int(match.group(1))


def run_pytest(args: list, env: dict) -> tuple:
    """(exit status, output) of the HIL run. Past RUN_LIMIT_S it gets Ctrl-C, so that its session ends the
    way a person's would (port closed, broker and cloud stopped), then SIGKILL for its process group."""
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs",
                             "-W", "ignore::DeprecationWarning", *args],
                            cwd=paths.HOST_TESTS, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        output = proc.communicate(timeout=RUN_LIMIT_S)[0]
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            output = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output = proc.communicate()[0]
        pytest.fail(f"the HIL run took longer than {RUN_LIMIT_S:g} s; its output:\n{output[-3000:]}")


def _clean_env(**extra) -> dict:
    # this pytest's own variables (an xdist worker's id would make the inner run pick another board)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "RMKIT_HIL_"))}
    env.update(extra)
    return env


def test_hil_run_passes_against_a_virtual_board_through_its_serial_port(tmp_path, artifacts_dir):
    ssid, passphrase = "rmkit-lab", secrets.token_hex(8)
    air = write_air(tmp_path / "air.json", {"ssid": ssid, "password": passphrase, "rssi": -48, "channel": 6})
    flash = tmp_path / "flash"
    flash.mkdir()  # empty: an erased filesystem, no firmware, no factory data
    board = VirtualBoard("vb-hil", flash, air=air, pty_link=tmp_path / "vb-hil.pty",
                         log_path=artifacts_dir / "vb-hil.serial.log")
    # and an erased chip: no bootloader, no MicroPython (the board boot-loops until it is flashed)
    board.spi_flash_path.write_bytes(b"\xff" * FLASH_SIZE)
    try:
        board.start()
        assert board.chip_state == "bootloop"
        run_hil_against(board, ssid, passphrase, tmp_path, artifacts_dir)
    finally:
        board.stop()


def test_hil_run_over_ble_passes_against_a_virtual_board(tmp_path, artifacts_dir):
    """The same run provisioning over BLE (--hil-transport ble): factory data says ble, and the harness's client
    reaches the board's simulated radio through Bumble (--ble-hci), where a real board would use bleak."""
    ssid, passphrase = "rmkit-lab", secrets.token_hex(8)
    air = write_air(tmp_path / "air.json", {"ssid": ssid, "password": passphrase, "rssi": -48, "channel": 6})
    flash = tmp_path / "flash"
    flash.mkdir()
    board = VirtualBoard("vb-hil-ble", flash, air=air, pty_link=tmp_path / "vb-hil-ble.pty",
                         log_path=artifacts_dir / "vb-hil-ble.serial.log")
    try:
        board.start()
        # two scenarios, not all: the serial-port run above takes every scenario through HIL mode; over BLE
        # what differs is the transport, which a mapping and provisioning during a GC storm exercise
        run_hil_against(board, ssid, passphrase, tmp_path, artifacts_dir, flash_image=False,
                        transport=["--hil-transport", "ble", "--ble-hci", board.ble_hci,
                                   "-k", "client_first_then_node or collects_garbage"])
        assert "ble: central connected" in board.read_log()
        assert json.loads((flash / "factory" / "factory.json").read_text())["transport"] == "ble"
    finally:
        board.stop()


def run_hil_against(board: VirtualBoard, ssid: str, passphrase: str, tmp_path, artifacts_dir,
                    flash_image: bool = True, transport: list = ()) -> None:
    image = tmp_path / "ESP32_GENERIC-test.bin"   # a MicroPython image, as far as esptool and the ROM can tell
    image.write_bytes(espimage.build_firmware(espimage.build_app()))
    softap = f"{board.softap[0]}:{board.softap[1]}"
    args = ["hil", "--board", board.rfc2217_url, *(["--firmware", str(image)] if flash_image else []),
            "--wifi-ssid", ssid, "--broker-host", "localhost",
            *(transport or ["--board-softap", softap])]
    expected = collected(["hil", *(["-k", transport[transport.index("-k") + 1]] if "-k" in transport else [])])
    assert expected > 0
    junit = tmp_path / "hil-junit.xml"

    started = time.monotonic()
    returncode, output = run_pytest([f"--junitxml={junit}", *args], env=_clean_env(RMKIT_HIL_WIFI_PASS=passphrase))
    took = time.monotonic() - started
    (artifacts_dir / "hil-run.txt").write_text(f"$ pytest {' '.join(args)}\n({took:.1f} s, exit {returncode})\n"
                                               + output)
    where = (f"HIL run output: {artifacts_dir / 'hil-run.txt'}; its artifacts: {paths.ARTIFACTS}/hil_*\n"
             + "\n".join(output.splitlines()[-30:]))

    assert returncode == 0, where
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": expected, "failures": 0, "errors": 0, "skipped": 0}, where
    summary = output.strip().splitlines()[-1]
    assert re.fullmatch(rf"=* ?{expected} passed(, \d+ deselected)? in [\d.]+s( \(.*\))? ?=*", summary.strip()), where

    # the board got MicroPython, the firmware and its factory data over its serial port, and runs the node
    assert board.chip_state == "app"
    flash = Path(board.flash_dir)
    assert (flash / "main.py").exists() and (flash / "factory" / "factory.json").exists()
    assert "node: state: provisioning" in board.read_log()
