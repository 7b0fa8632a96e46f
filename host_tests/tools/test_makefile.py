"""The Makefile's knobs: every one is listed by `make help`, and each name has one meaning (PORT is a
board's serial device, TCP_PORT a virtual board's TCP port); contradictory knobs are one clear line."""

import re
import subprocess
from support.paths import REPO_ROOT as REPO


def make(*args: str) -> subprocess.CompletedProcess:
    # -n: print, do not run; -o: take setup as done (make test has run it)
    return subprocess.run(["make", "-n", "-o", ".venv/.installed", "-o", "mosquitto", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_make_help_lists_every_knob():
    knobs = re.findall(r"^([A-Z_]+)\s*\?=", (REPO / "Makefile").read_text(), re.M)
    assert "PYTEST_ARGS" in knobs and "TCP_PORT" in knobs
    shown = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    missing = [knob for knob in knobs if not re.search(rf"\b{knob}\b", shown)]
    assert missing == [], f"make help does not mention {missing}"


def test_deploy_with_both_a_flash_directory_and_a_serial_port_is_refused():
    result = make("deploy", "FLASH=vboards/x", "PORT=/dev/ttyUSB9")
    assert result.returncode != 0
    assert "give FLASH= (a virtual board's flash directory) or PORT= (a board's serial port), not both" in result.stderr


def test_vboard_takes_its_tcp_port_as_tcp_port_and_says_so_for_port():
    result = make("vboard", "PORT=5555")
    assert result.returncode != 0 and "TCP_PORT=5555" in result.stderr
    assert "--port 5555" in make("vboard", "TCP_PORT=5555").stdout
