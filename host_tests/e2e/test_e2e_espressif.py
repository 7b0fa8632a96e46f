"""Espressif's unmodified esp-rainmaker-cli 1.14.1 against our whole stack, once by challenge-response (the node
advertises it) and once by the secret-key flow (the node's user_mapping setting offers only that): inside a private user +
network namespace where 192.168.4.1 (the ESP32 SoftAP default its softap transport hard-codes) lives on the namespace's loopback, `make sandbox SOFTAP=192.168.4.1:80` (with a
private build/ mounted over the repo's) serves a virtual board, mosquitto and the local cloud;
the CLI logs in to the printed cloud URL with the printed user through a custom profile, provisions the
node over SoftAP with Security 1 and its PoP, sees the node added to the account, and `getnodes` lists it.

The namespace also has its own mount and pid space (host_tests/support/launch_e2e_netns.py is its
init), so whatever the run leaves behind dies with the driver; the test still checks that nothing was left.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rmkit.benchmarks.espcli_flow import UNSHARE  # the namespace make espcli-demo and make bench use
from support.paths import ESPCLI_BIN, REPO_ROOT, launcher
from support.wait import wait_until

ESPCLI = ESPCLI_BIN / "esp-rainmaker-cli"
DRIVER = launcher("e2e_netns")
RUN_TIMEOUT_S = 150


def _require_user_namespaces() -> None:
    """Fail loudly (never skip) when this machine cannot give us a private network namespace."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("this test needs `unshare` (util-linux) and `ip` (iproute2) to build a private network "
                    "namespace for Espressif's CLI; install them")
    probe = subprocess.run(UNSHARE + ["ip", "link", "set", "lo", "up"], capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        pytest.fail("unprivileged user + network + pid namespaces are unavailable here (`%s` failed: %s); "
                    "enable them (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0; in a "
                    "container, allow unshare/mount of proc) to run Espressif's CLI against the stack"
                    % (" ".join(UNSHARE), probe.stderr.strip() or f"exit {probe.returncode}"))


def _processes_in_net_namespace(net_ns: str) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/net") == net_ns:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _copy_logs(out: Path, artifacts: Path) -> None:
    for path in [*out.glob("*.log"), *out.glob("sandbox.std*"), out / "report.json",
                 *(out / "build" / "sandbox").glob("*.log"), out / "build" / "sandbox" / "broker" / "mosquitto.log"]:
        if path.is_file():
            shutil.copy(path, artifacts / path.name)


# What esp-rainmaker-cli 1.14.1 prints in each flow: the node offers challenge-response (user_mapping both, the
# default) or only the secret-key flow (user_mapping secret)
CLI_FLOW_LINES = {
    "both": ("Device supports challenge-response, initiating user-node association...",
             "Challenge-response user-node association successful", "Node {node_id} added to your account successfully!"),
    "secret": ("Device does not support challenge-response, proceeding with traditional flow",
               "Sending user information to node - Successful", "Node {node_id} provisioned successfully!",
               "Node added to your account successfully!"),
}


@pytest.mark.parametrize("user_mapping, cpu", [("both", None), ("secret", None), ("both", "esp32")],
                         ids=["ch_resp", "secret", "ch_resp-esp32-speed"])
def test_espressif_cli_provisions_and_maps_the_sandbox_node_in_a_private_namespace(tmp_path, artifacts_dir,
                                                                                   user_mapping, cpu):
    """By challenge-response, which the node advertises by default, and by the secret-key flow when the node's
    setting offers only that; and by challenge-response with the board computing at an ESP32's speed, within the
    CLI's own timeouts."""
    if not ESPCLI.exists():
        pytest.fail(f"{ESPCLI} is missing: run `make espcli` (make test does) to install esp-rainmaker-cli 1.14.1")
    _require_user_namespaces()
    for old in artifacts_dir.iterdir():  # this test's own folder: no file from an earlier run may mislead
        if old.is_file():
            old.unlink()
    out = tmp_path / "netns"
    extra = []
    if os.environ.get("RMKIT_TEST_HEAP"):  # a local investigation only, as in fixtures_stack
        extra = ["--heap", os.environ["RMKIT_TEST_HEAP"]]
    argv = (UNSHARE + [sys.executable, str(DRIVER), str(out), "--repo", str(REPO_ROOT), "--user-mapping", user_mapping]
            + (["--cpu", cpu] if cpu else []) + extra)
    driver = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        driver_output, _ = driver.communicate(timeout=RUN_TIMEOUT_S)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)  # --kill-child takes the namespace's init, and with it everything
        driver_output, _ = driver.communicate()
        timed_out = True
    finally:
        if driver.poll() is None:  # the test itself was interrupted
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    (artifacts_dir / "driver.out").write_text(driver_output)
    _copy_logs(out, artifacts_dir)
    if timed_out:
        pytest.fail(f"the namespace run did not end within {RUN_TIMEOUT_S} s; output:\n{driver_output}")

    report_path = out / "report.json"
    assert report_path.exists(), f"the driver wrote no report (exit {driver.returncode}):\n{driver_output}"
    report = json.loads(report_path.read_text())
    # nothing of the run may outlive it: not in the namespace when the sandbox stopped, not on the host after
    wait_until(lambda: _processes_in_net_namespace(report["net_ns"]) == [], 5, interval=0.1,
               what="the namespace's processes to end", detail=lambda: str(_processes_in_net_namespace(report["net_ns"])))
    assert report["leftovers"] == [], "processes left after the sandbox's SIGTERM: %s" % report["leftovers"]
    assert "error" not in report, report["error"] + "\n" + driver_output
    assert report["sandbox"]["softap"] == "192.168.4.1:80"  # the ESP32 SoftAP default, inside the namespace
    assert report["sandbox_alive_before_stop"], "the sandbox died during the run; see sandbox.out"
    assert report["sandbox_stopped_cleanly"], "the sandbox did not say it stopped on SIGTERM; see sandbox.stdout"

    commands = report["commands"]
    # the CLI's exit codes are unreliable (docs/protocol.md 6): assert on its own texts
    for name, run in commands.items():
        assert run["rc"] != "timeout", f"esp-rainmaker-cli {name} hung:\n{run['stdout']}{run['stderr']}"
        assert "[ERROR]" not in run["stdout"] + run["stderr"], f"{name}:\n{run['stdout']}{run['stderr']}"
    assert "Login successful!" in commands["login"]["stdout"]
    provision = commands["provision"]["stdout"]
    serial = "".join(p.read_text(errors="replace") for p in (out / "build" / "sandbox").glob("vb-*.log"))
    node_ids = re.findall(r"node id (\w+)", serial)
    assert node_ids, "no node id in the board's serial log (vb-*.log in the artifacts)"
    node_id = node_ids[0]
    assert "Establishing session - Successful" in provision
    for line in CLI_FLOW_LINES[user_mapping]:
        assert line.format(node_id=node_id) in provision, provision
    assert "WiFi state: Connected" in provision
    nodes = re.findall(r"^\s*\d+\.\s+(\S+)\s*$", commands["getnodes"]["stdout"], re.MULTILINE)
    assert nodes == [node_id], commands["getnodes"]["stdout"]
