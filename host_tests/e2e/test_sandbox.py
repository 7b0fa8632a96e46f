"""`rmkit sandbox` (and `rmkit demo`) as a user drives them: the broker restarts on request (SIGHUP
graceful, SIGUSR1 as after a crash) with its persistence kept, so a mapping a node publishes right
after each restart is confirmed; bad knobs and foreign work directories are one clear line."""

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

from support.fixtures_cloud import ApiClient
from support.paths import REPO_ROOT
from support.wait import wait_until
from rmkit.pki import Pki

NODE = "SANDBOXNODE1"


def publish_as_node(pki: Pki, broker: str, payload: dict) -> None:
    host, port = broker.rsplit(":", 1)
    identity = pki.node_identity(NODE)
    context = ssl.create_default_context(cafile=str(pki.ca_pem))
    context.load_cert_chain(str(identity.cert_pem), str(identity.key_pem))
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=NODE)
    client.tls_set_context(context)
    client.connect("localhost", int(port))
    client.loop_start()
    try:
        info = client.publish(f"node/{NODE}/user/mapping", json.dumps(payload).encode(), qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@contextlib.contextmanager
def running_sandbox(*args: str, argv: list = None):
    """`rmkit sandbox ARGS` (or `argv`, e.g. a `make sandbox` line) in the background -> (process, its output lines
    so far, its SANDBOX json); killed at the end if the test did not stop it."""
    proc = subprocess.Popen(argv or [sys.executable, "-m", "rmkit", "sandbox", *args], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        wait_until(lambda: any(line.startswith("SANDBOX ") for line in lines), timeout=60, what="the SANDBOX line")
        yield proc, lines, json.loads(next(line for line in lines if line.startswith("SANDBOX "))[len("SANDBOX "):])
    finally:
        if proc.poll() is None:  # SIGTERM first: a sandbox killed outright leaves its broker running
            os.killpg(proc.pid, signal.SIGTERM)  # make and the sandbox under it
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    # its board runs in the sandbox's process, out of the fixtures' sight: the sandbox logs its faults
    faults = [line for line in lines if "vboard FAULT: " in line]
    assert not faults, "the sandbox's board reported what an ESP32 does not survive:\n" + "".join(faults)


def test_sandbox_restarts_its_broker_on_request_and_loses_no_mapping(tmp_path):
    with running_sandbox("--no-board", "--workdir", str(tmp_path / "sb")) as (proc, lines, info):
        assert info["pid"] == proc.pid
        api = ApiClient(info["cloud_url"])
        token = api.login(info["user"], info["password"])["accesstoken"]
        user_id = api.request("GET", "/v1/user", token=token).body["user_id"]
        pki = Pki(Path(info["pki"]))
        for sig, how in ((signal.SIGUSR1, "SIGKILL"), (signal.SIGHUP, "graceful")):
            key = f"key-{how}"
            request_id = api.put_mapping(token, NODE, key).body["request_id"]
            proc.send_signal(sig)
            wait_until(lambda: any(f"broker restarted ({how})" in line for line in lines), timeout=20,
                       what=f"the broker's restart ({how})")
            publish_as_node(pki, info["broker"], {"node_id": NODE, "user_id": user_id, "secret_key": key})
            wait_until(lambda: api.mapping_status(token, request_id).body["request_status"] == "confirmed",
                       timeout=30, what=f"the mapping published after the {how} restart to be confirmed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    # without a board (make cloud) it is the broker and the cloud, and says so
    said = [line for line in lines if not line.startswith(("SANDBOX ", " "))]
    assert said[0].startswith("cloud ready (everything on this machine") and said[-1] == "cloud: stopped\n", said
    assert not [line for line in said if "sandbox" in line.replace(str(tmp_path), "")], said


def test_sandbox_and_demo_refuse_to_empty_a_directory_they_did_not_make(tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    for command in ("sandbox", "demo"):
        result = subprocess.run([sys.executable, "-m", "rmkit", command, "--workdir", str(precious)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"rmkit {command}: work directory {precious} holds files rmkit did not make (no .rmkit-workdir "
            "inside); refusing to empty it: pick a new or empty directory"]
        assert (precious / "chapter1.tex").read_text() == "years of work"


def test_a_workdir_from_an_earlier_run_is_emptied(tmp_path):
    from rmkit.stack import WORKDIR_MARKER, fresh_workdir

    workdir = fresh_workdir(tmp_path / "run")
    (workdir / "old.log").write_text("last run")
    fresh_workdir(workdir)
    assert sorted(p.name for p in workdir.iterdir()) == [WORKDIR_MARKER]


def test_a_bad_heap_is_one_line_naming_the_knob_and_nothing_is_started_or_written(tmp_path):
    workdir = tmp_path / "sb"
    result = subprocess.run([sys.executable, "-m", "rmkit", "sandbox", "--heap", "10", "--workdir", str(workdir)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "rmkit sandbox: --heap (make sandbox HEAP=): heap size '10' must be between 16K and 512M; "
        "omit it for an ESP32's heap"]
    assert not workdir.exists()


def test_provision_without_a_host_says_which_knob_to_give():
    result = subprocess.run([sys.executable, "-m", "rmkit", "provision", "--host", "", "--ssid", "x", "--user-id", "u"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--host is empty: give the node's address as IP:PORT (make provision HOST=IP:PORT" in result.stderr


def test_sandbox_over_ble_prints_a_line_that_provisions_its_board(tmp_path):
    """make sandbox TRANSPORT=ble: the SANDBOX line names the board's BLE device and radio instead of a SoftAP
    address, and the printed `rmkit provision` line, run as printed, maps the board to `confirmed`."""
    with running_sandbox("--transport", "ble", "--workdir", str(tmp_path / "sb")) as (proc, lines, info):
        assert "softap" not in info
        assert info["ble_device"].startswith("PROV_") and info["ble_hci"].startswith("tcp-client:127.0.0.1:")
        start = next(i for i, line in enumerate(lines) if line.strip() == "try:")
        command = (lines[start + 1].rstrip().rstrip("\\") + lines[start + 2]).strip()
        assert f"--transport ble --device {info['ble_device']} --hci {info['ble_hci']}" in command
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "request_status confirmed" in result.stdout
        assert info["passphrase"] not in result.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_provision_over_ble_needs_a_device_and_says_so():
    def provision(*args):
        return subprocess.run([sys.executable, "-m", "rmkit", "provision", "--ssid", "x", "--user-id", "u",
                               "--sec", "0", *args], capture_output=True, text=True, timeout=60)

    result = provision("--transport", "ble")
    assert result.returncode == 2
    assert "--transport ble needs --device: the node's advertised name (PROV_xxxxxx) or address" in result.stderr
    result = provision("--transport", "ble", "--device", "PROV_123456", "--host", "127.0.0.1:80")
    assert result.returncode == 2 and "--host is for --transport softap" in result.stderr
    result = provision("--host", "127.0.0.1:80", "--device", "PROV_123456")
    assert result.returncode == 2 and "--device and --hci are for --transport ble" in result.stderr


def test_provision_over_ble_with_nothing_advertising_is_unreachable(tmp_path):
    """A radio with no node on it: exit 3 (unreachable) with a line naming the device, after --scan-timeout."""
    from rmkit.vboard.ble_radio import BleRadio

    radio = BleRadio("empty-air", "24:0a:c4:00:00:01").start()
    try:
        result = subprocess.run([sys.executable, "-m", "rmkit", "provision", "--transport", "ble", "--device",
                                 "PROV_000001", "--hci", f"tcp-client:127.0.0.1:{radio.hci_port}", "--ssid", "x",
                                 "--user-id", "u", "--sec", "0", "--scan-timeout", "1.5"],
                                capture_output=True, text=True, timeout=60)
    finally:
        radio.stop()
    assert result.returncode == 3, result.stderr
    assert "node unreachable: connect: PROV_000001 over BLE: no device PROV_000001 advertising a service within " \
        "1.5 s" in result.stderr


def test_provision_over_ble_without_a_usable_system_bluetooth_says_what_to_do():
    """No --hci: the operating system's Bluetooth through bleak; with BlueZ unreachable (the system bus pointed
    at nothing, as on a machine without BlueZ) that is one line naming the alternatives, exit 3."""
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS="unix:path=/nonexistent/rmkit-test-system-bus")
    result = subprocess.run([sys.executable, "-m", "rmkit", "provision", "--transport", "ble", "--device",
                             "PROV_000001", "--ssid", "x", "--user-id", "u", "--sec", "0", "--scan-timeout", "1"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 3, result.stderr
    assert "this computer's Bluetooth is not usable through bleak" in result.stderr
    assert "--hci tcp-client:127.0.0.1:PORT" in result.stderr


def make_sandbox(*knobs: str) -> list:
    """`make sandbox KNOB=...` as the README writes it (setup taken as done: make test ran it)."""
    return ["make", "-s", "-o", ".venv/.installed", "sandbox", *knobs]


def test_sandbox_serving_both_transports_prints_both_ways_to_reach_its_board(tmp_path):
    """make sandbox TRANSPORT=both: the SANDBOX line and the text name the SoftAP address and the BLE device with its
    radio, and each printed `rmkit provision` line is one of the two; the BLE one, run as printed, maps the board."""
    with running_sandbox(argv=make_sandbox("TRANSPORT=both", f"WORKDIR={tmp_path / 'sb'}")) as (proc, lines, info):
        assert info["softap"].startswith("127.0.0.1:")
        assert info["ble_device"].startswith("PROV_") and info["ble_hci"].startswith("tcp-client:127.0.0.1:")
        text = "".join(lines)
        assert f"SoftAP HTTP at {info['softap']} and BLE as {info['ble_device']}, simulated radio at " \
               f"{info['ble_hci']}" in text, text
        commands = [(lines[i + 1].rstrip().rstrip("\\") + lines[i + 2]).strip()
                    for i, line in enumerate(lines) if line.strip() in ("try:", "or over BLE:")]
        assert len(commands) == 2, text
        assert f"--host {info['softap']} " in commands[0]
        assert f"--transport ble --device {info['ble_device']} --hci {info['ble_hci']} " in commands[1]
        result = subprocess.run(["bash", "-c", commands[1]], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "request_status confirmed" in result.stdout, result.stdout + result.stderr
        stop_by_ctrl_c(proc, lines)


def stop_by_ctrl_c(proc, lines: list) -> None:
    """Ctrl-C to make and the sandbox under it; the sandbox says it stopped everything."""
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=30)
    wait_until(lambda: any(line.startswith("sandbox: stopped") for line in lines), timeout=5, what="sandbox: stopped")


def test_a_second_sandbox_is_told_the_knobs_that_start_it_and_they_do(tmp_path):
    with running_sandbox("--workdir", str(tmp_path / "first")) as (first, _, info):
        second_dir = tmp_path / "second"
        refused = subprocess.run(make_sandbox(f"WORKDIR={second_dir}"), cwd=REPO_ROOT, capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode != 0
        line = next(line for line in refused.stderr.splitlines() if line.startswith("rmkit sandbox: "))
        assert line.startswith("rmkit sandbox: a board named vb-sandbox is already running"), refused.stderr
        suggested = line.split("another way: ", 1)[1].split(" (", 1)[0]
        assert suggested == f"make sandbox WORKDIR={second_dir} BOARD=vb-sandbox2", line
        with running_sandbox(argv=["make", "-s", "-o", ".venv/.installed", *suggested.split()[1:]]) as (second, lines2, info2):
            assert info2["softap"] != info["softap"]
            stop_by_ctrl_c(second, lines2)


def test_a_board_that_dies_at_boot_is_one_line_with_its_error_at_once(tmp_path):
    """make sandbox HEAP=20K: the firmware's main.py fails with MemoryError and the board waits at its REPL; the
    sandbox says so as soon as the board printed it, in one line, and stops what it started."""
    started = time.monotonic()
    result = subprocess.run(make_sandbox("HEAP=20K", "BOARD=vb-heap", f"WORKDIR={tmp_path / 'sb'}"), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("rmkit sandbox: ")]
    assert len(ours) == 1, result.stderr
    assert "the firmware stopped at boot and waits at the REPL: MemoryError: memory allocation failed" in ours[0]
    assert "20K is too small a heap for the firmware: give more (HEAP=110K) or none for an ESP32's" in ours[0]
    assert took < 20, f"took {took:.1f} s: the sandbox waited instead of reading the board's error"
