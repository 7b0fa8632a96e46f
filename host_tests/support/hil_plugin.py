"""The hardware-in-the-loop options, the `hil` marker and its skip rule (registered by host_tests/conftest.py).

    pytest host_tests/hil --board /dev/ttyUSB0 --wifi-ssid S --wifi-pass P --broker-host H
                          [--firmware image.bin] [--board-softap 192.168.4.1:80]

Without --board every test marked `hil` is deselected, and the report header says why (DESELECT_REASON):
not skipped, since nothing is hidden: `make test` runs the same tests against a virtual board
(host_tests/e2e/test_hil_virtual.py). --board and
--board-softap may be given several times: with pytest-xdist, worker gwN takes the N-th board (and the
N-th SoftAP address, or the only one given); without it, the first board is used. README.md,
"Hardware in the loop", says how to run it.
"""

from __future__ import annotations

import os

import pytest

DESELECT_REASON = ("tests marked hil deselected: no --board given (README: Hardware in the loop); "
                   "host_tests/e2e/test_hil_virtual.py runs them against a virtual board")
DEFAULT_SOFTAP = "192.168.4.1:80"   # where an ESP32's provisioning service is, seen from a station on its AP
WIFI_PASS_ENV = "RMKIT_HIL_WIFI_PASS"


def pytest_addoption(parser):
    group = parser.getgroup("hil", "hardware-in-the-loop: the end-to-end scenarios on a board (README: Hardware "
                                   "in the loop)")
    group.addoption("--board", action="append", default=[], metavar="PORT",
                    help="the board's serial port (/dev/ttyUSB0, /dev/serial/by-id/..., rfc2217://HOST:PORT, "
                         "socket://HOST:PORT); enables the tests marked hil. Repeatable: with pytest-xdist "
                         "(-n N) worker gwN takes the N-th board")
    group.addoption("--firmware", metavar="IMAGE",
                    help="flash this MicroPython image first (rmkit flash), before deploying the firmware")
    group.addoption("--wifi-ssid", metavar="SSID", help="the Wi-Fi network the board is provisioned onto")
    group.addoption("--wifi-pass", metavar="PASSPHRASE", default=os.environ.get(WIFI_PASS_ENV),
                    help=f"its passphrase (default: ${WIFI_PASS_ENV}, which keeps it off the command line)")
    group.addoption("--broker-host", metavar="HOST",
                    help="this machine's name or address as the board reaches it over Wi-Fi: the harness's "
                         "broker and SNTP server listen there (other machines on that network can reach them "
                         "too); localhost for a virtual board")
    group.addoption("--hil-transport", choices=("softap", "ble"), default="softap",
                    help="how the harness provisions the board: softap (its access point and HTTP, default) or ble "
                         "(the board's factory data then says ble; this machine's Bluetooth through bleak, or "
                         "--ble-hci)")
    group.addoption("--ble-hci", metavar="SPEC",
                    help="with --hil-transport ble: drive this HCI transport with Bumble instead of the operating "
                         "system's Bluetooth (usb:0 for a USB controller, tcp-client:127.0.0.1:PORT for a virtual "
                         "board's radio)")
    group.addoption("--board-softap", action="append", default=[], metavar="HOST:PORT",
                    help=f"the board's provisioning service as this machine reaches it (default {DEFAULT_SOFTAP}, "
                         "once this machine has joined the board's PROV_xxxxxx access point). Repeatable, "
                         "one per --board")


def pytest_configure(config):
    config.addinivalue_line("markers", "hil: hardware-in-the-loop test: needs a board (--board PORT), see README")
    boards = config.getoption("board")
    if not boards:
        return
    missing = [name for name, value in (("--wifi-ssid", config.getoption("wifi_ssid")),
                                        ("--wifi-pass", config.getoption("wifi_pass")),
                                        ("--broker-host", config.getoption("broker_host"))) if value is None]
    if missing:
        raise pytest.UsageError(f"--board needs {', '.join(missing)} too (--wifi-pass may come from "
                                f"${WIFI_PASS_ENV}); see README, Hardware in the loop")
    if config.getoption("ble_hci") and config.getoption("hil_transport") != "ble":
        raise pytest.UsageError("--ble-hci is for --hil-transport ble")
    softaps = config.getoption("board_softap")
    if len(softaps) > 1 and len(softaps) != len(boards):
        raise pytest.UsageError(f"{len(boards)} --board but {len(softaps)} --board-softap: give one --board-softap "
                                "for all boards, or one per --board in the same order")
    for softap in softaps:
        host, _, port = softap.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise pytest.UsageError(f"--board-softap {softap!r}: give HOST:PORT, e.g. {DEFAULT_SOFTAP}")


def pytest_collection_modifyitems(config, items):
    if config.getoption("board"):
        return
    deselected = [item for item in items if "hil" in item.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if "hil" not in item.keywords]


def pytest_report_header(config):
    boards = config.getoption("board")
    if not boards:
        return f"hil: {DESELECT_REASON}"
    host = config.getoption("broker_host")
    lines = [f"hil: board(s) {', '.join(boards)}; broker and SNTP for the board on {host}"]
    if host not in ("localhost", "127.0.0.1"):
        lines.append(f"hil: warning: the broker and SNTP server listen on {host}: other machines on that network can "
                     "reach them while the tests run (the broker admits only certificates of the session's own CA)")
    if len(boards) > 1 and not _xdist_workers(config):
        lines.append(f"hil: {len(boards)} boards but no pytest-xdist workers: only {boards[0]} is used "
                     f"(pip install pytest-xdist, then -n {len(boards)})")
    return lines


def _xdist_workers(config) -> bool:
    """True when pytest-xdist runs this session on workers (-n N, -n auto)."""
    return bool(config.getoption("numprocesses", default=None))


def worker_index() -> int:
    """This process's place among pytest-xdist workers (gw0 -> 0), 0 without xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = worker[2:] if worker.startswith("gw") else ""
    return int(digits) if digits.isdigit() else 0
