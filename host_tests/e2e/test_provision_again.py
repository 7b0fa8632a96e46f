"""Provisioning a node again, as a new user does it: the same `rmkit provision` line after Ctrl-C stopped it
while the node was joining; another network's credentials meanwhile; and `make reset WIFI=1`, which puts a
provisioned node back into provisioning with its user kept (README "Putting a node back into provisioning")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading

from support.fixtures_stack import PASSWORD
from support.paths import REPO_ROOT, VENV_BIN
from support.wait import wait_until

RMKIT = str(VENV_BIN / "rmkit")
# long enough to press Ctrl-C while the node joins (the simulated access point's join time), with room for
# a loaded host: 4 s was once too short for the test to read the client's "applied" line and interrupt it
JOIN_S = 10.0
APPLIED = "applied, waiting for the node to join"
EMAIL = "again@example.com"


def provision_line(rig, board, ssid: str) -> list[str]:
    """The `rmkit provision` line make sandbox prints, for this rig's board and user EMAIL."""
    host, port = board.softap
    return [RMKIT, "provision", "--host", f"{host}:{port}", "--pop", board.pop, "--ssid", ssid, "--passphrase",
            rig.passphrase, "--cloud-url", rig.stack.cloud.base_url, "--email", EMAIL, "--password", PASSWORD]


def interrupted_after_apply(argv: list[str]) -> str:
    """Run `argv`, press Ctrl-C once it says the credentials were applied; its stderr."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = []
    for line in proc.stderr:
        said.append(line)
        if APPLIED in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130, "".join(said) + rest
    return "".join(said) + rest


def slow_air(rig, *networks: str) -> None:
    """The rig's networks, each taking JOIN_S to join, and its user."""
    rig.add_user(EMAIL)
    rig.stack.write_air([{"ssid": ssid, "password": rig.passphrase, "rssi": -48, "channel": 6, "join_s": JOIN_S}
                         for ssid in networks])


def test_the_same_command_after_ctrl_c_while_the_node_joins_finishes_the_job(rig):
    slow_air(rig, rig.ssid)
    board = rig.add_board("vb-again")
    argv = provision_line(rig, board, rig.ssid)
    interrupted_after_apply(argv)
    since = board.log_offset()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "request_status confirmed" in again.stdout
    # the provisioning boot's log: with challenge-response the client is done before the node reboots into
    # station mode, which joins once more (seen in the log when the test reads it after that reboot)
    log = board.read_log().split("provisioned; rebooting")[0]
    assert log.count(f"joining {rig.ssid}") == 1, "the join was started again"
    assert f"Wi-Fi credentials for {rig.ssid} again: that join is under way" in board.read_log(since)
    assert "SetConfig refused" not in log


def test_other_credentials_while_the_node_joins_wait_for_that_join_and_say_where_it_went(rig):
    slow_air(rig, rig.ssid, "office")
    board = rig.add_board("vb-other")
    interrupted_after_apply(provision_line(rig, board, rig.ssid))
    other = subprocess.run(provision_line(rig, board, "office"), capture_output=True, text=True,
                           timeout=120)
    assert other.returncode == 0, other.stdout + other.stderr
    assert "InternalError" not in other.stderr
    assert f"the node is joining {rig.ssid}; waiting for its result" in other.stderr
    assert f"the node joined '{rig.ssid}', not 'office'" in other.stderr
    refused = [line for line in board.read_log().splitlines() if "SetConfig refused" in line]
    assert len(refused) == 1 and f"SetConfig refused: joining {rig.ssid}; wait for its result" in refused[0], refused


def make_sandbox_running(workdir, board: str):
    proc = subprocess.Popen(["make", "-s", "-o", ".venv/.installed", "sandbox", "USER_MAPPING=secret",
                             f"WORKDIR={workdir}", f"BOARD={board}"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    wait_until(lambda: any(line.startswith("SANDBOX ") for line in lines) or proc.poll() is not None, timeout=90,
               what="the SANDBOX line")
    return proc, lines


def test_make_reset_wifi_puts_a_provisioned_node_back_into_provisioning_with_its_user_kept(tmp_path):
    proc, lines = make_sandbox_running(tmp_path / "sb", "vb-reset")
    try:
        info = json.loads(next(line for line in lines if line.startswith("SANDBOX "))[len("SANDBOX "):])
        start = next(i for i, line in enumerate(lines) if line.strip() == "try:")
        provision = (lines[start + 1].rstrip().rstrip("\\") + lines[start + 2]).strip()
        first = subprocess.run(["bash", "-c", provision], capture_output=True, text=True, timeout=120)
        assert first.returncode == 0 and "request_status confirmed" in first.stdout, first.stdout + first.stderr
        state_path = tmp_path / "sb" / "boards" / "vb-reset" / "state.json"
        serial = tmp_path / "sb" / "vb-reset.log"
        wait_until(lambda: "mapped_user_id" in json.loads(state_path.read_text()), timeout=60,
                   what="the node's acknowledged mapping")
        before = json.loads(state_path.read_text())
        offset = serial.stat().st_size

        reset = subprocess.run(["make", "-s", "-o", ".venv/.installed", "reset", "WIFI=1", "BOARD=vb-reset"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert reset.returncode == 0, reset.stdout + reset.stderr
        assert reset.stdout.splitlines()[-1] == ("reset: done (credentials forgotten); the board reboots into "
                                                 "provisioning")
        wait_until(lambda: "state: provisioning (service" in serial.read_text(errors="replace")[offset:], timeout=30,
                   what="the node back in provisioning")
        after = json.loads(state_path.read_text())
        assert "wifi" not in after and after["mapped_user_id"] == before["mapped_user_id"], (before, after)

        again = subprocess.run(["bash", "-c", provision], capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "request_status confirmed" in again.stdout, again.stdout + again.stderr
        assert info["user"] in provision

        # the factory reset: online again, the node tells the cloud, then forgets its network and its user
        wait_until(lambda: "online: config reported" in serial.read_text(errors="replace")[offset:], timeout=60,
                   what="the node online again")
        factory = subprocess.run([RMKIT, "reset", "--factory", "--name", "vb-reset"], capture_output=True, text=True,
                                 timeout=120)
        assert factory.returncode == 0, factory.stdout + factory.stderr
        assert factory.stdout.splitlines()[-1] == ("reset: done (reported to the cloud); the board reboots into "
                                                   "provisioning")
        state = json.loads(state_path.read_text())
        assert "wifi" not in state and "mapped_user_id" not in state, state
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_reset_of_a_stopped_virtual_board_forgets_its_network_on_its_flash_and_refuses_a_factory_reset(tmp_path):
    flash = tmp_path / "vb1"
    flash.mkdir()
    (flash / "state.json").write_text(json.dumps({"wifi": {"ssid": "home", "passphrase": "pw"},
                                                  "mapped_user_id": "u1"}))
    wifi = subprocess.run([RMKIT, "reset", "--wifi", "--flash", str(flash)], capture_output=True, text=True, timeout=60)
    assert wifi.returncode == 0, wifi.stderr
    assert json.loads((flash / "state.json").read_text()) == {"mapped_user_id": "u1"}
    factory = subprocess.run([RMKIT, "reset", "--factory", "--flash", str(flash)], capture_output=True, text=True,
                             timeout=60)
    assert factory.returncode == 2 and factory.stderr.strip().splitlines() == [
        f"rmkit reset: no board runs on {flash}: a factory reset must be able to tell the cloud, so start the board "
        f"first (make vboard FLASH={flash}), then reset it"]
