"""`make demo` / `rmkit demo`: exits 0 only when confirmed, writes the picture, leaves no process behind
(also when interrupted with Ctrl-C)."""

import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from support.wait import wait_until

RMKIT = [sys.executable, "-m", "rmkit"]


def _descendants(pid: int) -> list[int]:
    """Every live process whose ancestry leads to pid (via /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def _processes_using(workdir: Path) -> list[str]:
    """Command lines that mention the demo's work directory (its mosquitto, its board)."""
    hits = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                environ = (entry / "environ").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(workdir) in cmdline or str(workdir) in environ:
                hits.append(f"{entry.name}: {cmdline[:120]}")
    return hits


# the arrows each flow draws (the client<->node ones name the transport)
FLOW_STEPS = {
    "auto": ("POST user/nodes/mapping/initiate", "ch_resp {{challenge}} [{label}]",
             "POST user/nodes/mapping/verify {{signature}}", "signature verified with the node's certificate: confirmed",
             "success: node mapped",
             "prov-config: Wi-Fi 'rmkit-lab' set and applied [{label}]"),
    "secret": ("cloud_user_assoc {{user_id, secret_key}} [{label}]", "prov-config: Wi-Fi 'rmkit-lab' set and applied [{label}]",
               "PUT user/nodes/mapping {{node_id, secret_key}}", "MQTT user/mapping {{node_id, user_id, secret_key}}",
               "both sides match: confirmed", "request_status: confirmed"),
}
FLOW_NAME = {"auto": "mapping flow: challenge-response", "secret": "mapping flow: secret key"}


@pytest.mark.parametrize("transport, label, mapping", [("softap", "SoftAP", "auto"), ("ble", "BLE", "auto"),
                                                       ("softap", "SoftAP", "secret")])
def test_demo_confirms_draws_the_sequence_and_stops_everything(tmp_path, transport, label, mapping):
    """make demo (challenge-response, the node advertises it), make demo TRANSPORT=ble, make demo MAPPING=secret:
    confirmed, the run says which flow ran, and the picture draws that flow, naming the transport on every
    client<->node arrow."""
    workdir = tmp_path / "demo"
    run = subprocess.run(RMKIT + ["demo", "--workdir", str(workdir), "--transport", transport, "--mapping", mapping],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert FLOW_NAME[mapping] in run.stdout
    assert "...: confirmed" in run.stdout
    picture = workdir / "user-node-mapping.svg"
    texts = [t.text for t in ET.parse(picture).getroot().iter("{http://www.w3.org/2000/svg}text")]
    for step in FLOW_STEPS[mapping]:
        assert step.format(label=label) in texts, step
    assert str(picture) in run.stdout
    assert _processes_using(workdir) == []


def test_the_whole_flow_confirms_on_a_board_computing_at_esp32_speed(tmp_path, esp32_speed):
    """make demo CPU=esp32: the node's Security 1 session and its signature take an ESP32's second or so
    (30-40 ms at full speed), and the mapping still confirms within the clients' and the cloud's timeouts.
    Measured from proto-ver to the signature, not per step: the pacer charges CPU after the fact
    (rmkit.vboard.cpu), and on a loaded host part of the session's charge can fall into the next step."""
    workdir = tmp_path / "demo"
    run = subprocess.run(RMKIT + ["demo", "--workdir", str(workdir), "--cpu", "esp32"],
                         capture_output=True, text=True, timeout=180)  # the factor is cached by esp32_speed
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ESP32 speed: CPU-bound work x" in run.stdout and "...: confirmed" in run.stdout
    proto_ver = float(re.search(r"\[\s*([\d.]+) s\] Client -> ESP32 node:\s+proto-ver", run.stdout).group(1))
    signed = float(re.search(r"\[\s*([\d.]+) s\] ESP32 node -> Client:\s+signature", run.stdout).group(1))
    assert signed - proto_ver > 0.6, run.stdout
    assert _processes_using(workdir) == []


def test_ctrl_c_stops_everything_the_demo_started(tmp_path):
    workdir = tmp_path / "demo"
    demo = subprocess.Popen(RMKIT + ["demo", "--workdir", str(workdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        for line in demo.stdout:  # interrupt once the board is up and the flow is under way
            if "booting virtual ESP32" in line:
                break
            assert time.monotonic() < deadline, "the demo never booted its board"
        children = _descendants(demo.pid)
        assert children, "the demo should have started mosquitto and a board by now"
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=30)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert demo.returncode != 0
    def alive() -> list:
        return [pid for pid in children if Path(f"/proc/{pid}").exists()]

    # the board's launcher dies with its parent (PR_SET_PDEATHSIG)
    wait_until(lambda: not alive(), 5, interval=0.05, what="the demo's processes to end",
               detail=lambda: str([Path(f"/proc/{pid}/cmdline").read_bytes() for pid in alive()]))
    assert _processes_using(workdir) == []
