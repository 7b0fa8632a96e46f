"""The Makefile's knobs: every one is listed by `make help`, and each name has one meaning (PORT is a
board's serial device, TCP_PORT a virtual board's TCP port); contradictory knobs are one clear line."""

import re
import subprocess
import time
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


FAKE_PYTHON = """#!/bin/sh
# stands in for python3 (-m venv) and the venv's python (-m pip install): prints as pip does, slowly
if [ "$2" = venv ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0; fi
case " $* " in *" --quiet "*|*" -q "*) sleep 2; exit 0;; esac
for p in flask paho-mqtt waitress; do echo "Collecting $p==1.0"; echo "  Using cached $p-1.0.whl"; sleep 0.7; done
echo "Installing collected packages: flask, paho-mqtt, waitress"
echo "Successfully installed flask-1.0 paho-mqtt-1.0 waitress-1.0"
"""


def test_setup_shows_each_package_while_it_installs(tmp_path):
    (tmp_path / "tools").mkdir()
    for name in ("Makefile", "requirements-dev.txt", "tools/pyproject.toml"):
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    proc = subprocess.Popen(["make", "setup", f"PYTHON={fake}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    arrivals = []
    for line in proc.stdout:
        arrivals.append((time.monotonic(), line.rstrip()))
    assert proc.wait(timeout=60) == 0, arrivals
    lines = [text for _, text in arrivals]
    assert "setup:   Collecting flask==1.0" in lines and "setup:   Successfully installed flask-1.0 paho-mqtt-1.0 " \
        "waitress-1.0" in lines, lines
    assert not any("Using cached" in text for text in lines)  # one line per package, not pip's every line
    first = next(t for t, text in arrivals if "Collecting flask" in text)
    assert arrivals[-1][0] - first > 1.0, "the lines came only at the end, not while installing"


def test_cloud_listens_where_broker_listen_says_with_the_pki_a_real_boards_factory_data_uses():
    default = make("cloud").stdout
    assert "sandbox --no-board --workdir build/cloud --pki-dir pki" in default
    assert "--broker-listen" not in default and "--broker-port" not in default  # 127.0.0.1, a free port
    real = make("cloud", "BROKER_LISTEN=0.0.0.0", "BROKER_PORT=8883").stdout
    assert "--broker-listen 0.0.0.0" in real and "--broker-port 8883" in real
