"""The reference for the end-to-end time: Espressif's unmodified esp-rainmaker-cli maps a virtual board
of our Stack, timed and split into phases as our client's flow is (rmkit.benchmarks.flow_timing).

Its SoftAP transport always talks to 192.168.4.1:80 (docs/protocol.md 1.1), so the runs happen inside a
private user + network + pid namespace (`unshare`), where that address is on the namespace's loopback:
`measure()` starts this module there (`--inside`), which starts the Stack (broker, SNTP, cloud), logs
the CLI in once through a profile for the local cloud, then per run adds a fresh board at
192.168.4.1:80 and times `esp-rainmaker-cli provision` from its start to "Node added to your account
successfully!" (the secret-key flow: the board offers no other, flow_timing.NODE_USER_MAPPING). The CLI's
own steps are read from its output as it prints them (unbuffered). The namespace's init is this module,
so whatever it started dies with it (`--kill-child`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from rmkit import REPO_ROOT
from rmkit.benchmarks.flow_timing import NODE_USER_MAPPING, FlowTiming, chain, watch_node_and_cloud
from rmkit.streamed import run_streamed
from rmkit.timeline import Timeline

ESPCLI = REPO_ROOT / ".venv-espcli" / "bin" / "esp-rainmaker-cli"
SOFTAP_IP = "192.168.4.1"
UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount", "--mount-proc",
           "--kill-child"]
EMAIL, PASSWORD = "espcli-bench@example.com", "espcli-bench-password-1"
CLI_TIMEOUT_S = 90

#: the CLI's own lines that end each client step (rmaker_cmd/provision.py, esp_rainmaker_cli 1.14.1)
CLI_LINES = {"session": "Establishing session - Successful",
             "user association": "Sending user information to node - Successful",
             "Wi-Fi apply": "WiFi state: Connected",
             "confirmed": "Node added to your account successfully!"}
CLI_MARKS = {"start": "cli started", **{step: f"cli {line}" for step, line in CLI_LINES.items()}}


class EspcliUnavailable(Exception):
    """The CLI is not installed, or this machine gives no private network namespace."""


def measure(runs: int, say: Callable[[str], None], heap: Optional[str] = None) -> list[FlowTiming]:
    """`runs` CLI flows in a private namespace; raises EspcliUnavailable with the reason when impossible."""
    if not ESPCLI.exists():
        raise EspcliUnavailable(f"{ESPCLI} is missing: run `make espcli`")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        raise EspcliUnavailable("needs `unshare` (util-linux) and `ip` (iproute2)")
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-espcli-") as tmp:
        result = Path(tmp) / "result.json"
        argv = UNSHARE + [sys.executable, "-m", "rmkit.benchmarks.espcli_flow", "--inside", tmp,
                          "--runs", str(runs)] + (["--heap", heap] if heap else [])
        # unshare --kill-child: killing it (at the timeout) takes the namespace, and all in it, along
        run = run_streamed(argv, timeout=60 + runs * (CLI_TIMEOUT_S + 30), on_line=say, start_new_session=True)
        if not result.exists():
            raise EspcliUnavailable(f"the namespace run wrote no result (exit {run.returncode})")
        rows = json.loads(result.read_text())
    if "error" in rows:
        raise EspcliUnavailable(rows["error"])
    return [FlowTiming(**row) for row in rows["runs"]]


# -- inside the namespace -------------------------------------------------------------------------

def _cli(env: dict, args: list[str], stdin_text: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([str(ESPCLI), *args], env=env, input=stdin_text, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)


def _time_cli_provision(env: dict, stack, board) -> FlowTiming:
    timeline = Timeline()
    watchers = watch_node_and_cloud(board, stack.cloud_log, timeline)
    timeline.add("client", "client", CLI_MARKS["start"])
    def mark(line: str) -> None:
        for step, text in CLI_LINES.items():
            if text in line:
                timeline.add("client", "client", CLI_MARKS[step])

    try:
        # the CLI asks to press Enter once the computer is on the node's access point
        run_streamed([str(ESPCLI), "provision", "--pop", board.pop, "--ssid", stack.ssid, "--passphrase",
                      stack.passphrase, "--no-retry"], timeout=CLI_TIMEOUT_S, on_line=mark, stdin_text="\n",
                     env=env)
    finally:
        for watcher in watchers:
            watcher.stop()
    return chain(timeline, CLI_MARKS, board.read_log())


def softap_address_on_loopback() -> None:
    """Inside the namespace: loopback up, with the ESP32 SoftAP default address the CLI talks to."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", SOFTAP_IP + "/32", "dev", "lo"], check=True)


def cli_environment(home: Path) -> dict:
    """The CLI's environment: its profiles, tokens and logs under `home` (never the user's ~/.espressif),
    no proxy between it and the local cloud or the node."""
    env = dict(os.environ, HOME=str(home / "home"), RM_USER_CONFIG_DIR=str(home / "cfg"),
               RMAKER_CLI_LOG_DIR=str(home / "logs"), NO_PROXY=f"127.0.0.1,localhost,{SOFTAP_IP}",
               PYTHONUNBUFFERED="1")
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ESP_RAINMAKER_PASSWORD"):
        env.pop(key, None)
    for sub in ("home", "cfg", "logs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return env


def _inside(out: Path, runs: int, heap: Optional[str]) -> dict:
    from rmkit.stack import Stack

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    softap_address_on_loopback()
    env = cli_environment(out / "espcli")
    timings = []
    with Stack(out / "stack", heap=heap) as stack:
        stack.add_user(EMAIL, PASSWORD)
        for args in (["profile", "add", "local", "--base-url", stack.cloud.base_url], ["profile", "switch", "local"],
                     ["login", "--user_name", EMAIL, "--password", PASSWORD]):
            done = _cli(env, args)
            if done.returncode != 0 or "[ERROR]" in done.stdout + done.stderr:
                return {"error": f"esp-rainmaker-cli {args[0]} {args[1] if args[0] == 'profile' else ''} failed: "
                                 + (done.stdout + done.stderr).strip().splitlines()[-1:][0]}
        for run in range(1, runs + 1):
            board = stack.add_board(f"vb-cli-{run}", softap=f"{SOFTAP_IP}:80", user_mapping=NODE_USER_MAPPING)
            try:
                board.wait_for_log(r"state: provisioning", timeout=30)
                timing = _time_cli_provision(env, stack, board)
            finally:
                board.stop()
            timings.append(timing)
            shown = f"{timing.total_s:.2f} s" if timing.total_s is not None else timing.status
            say(f"  end-to-end, esp-rainmaker-cli, run {run}/{runs}: {shown}")
    return {"runs": [vars(t) for t in timings]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inside", type=Path, required=True, help="(run by measure() inside the namespace)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--heap", help="a fixed firmware heap (default: an ESP32's)")
    args = parser.parse_args(argv)
    # pid 1 of a pid namespace ignores signals it has no handler for
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ["RMKIT_RUNTIME_DIR"] = str(args.inside / "run")  # the boards' pty links and records stay in here
    try:
        result = _inside(args.inside, args.runs, args.heap)
    except Exception as exc:  # noqa: BLE001 - reported to the outer process as the reference's reason
        result = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    (args.inside / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
