"""Runs INSIDE a private user + network + mount + pid namespace (`unshare -rn -p -f -m --mount-proc`): the
sandbox with its node at 192.168.4.1:80 (the ESP32 SoftAP default, on this namespace's loopback only),
then Espressif's unmodified esp-rainmaker-cli against it.

Usage: launch_e2e_netns.py OUT_DIR --repo REPO [--heap 512K]

The sandbox is started as a user would: `make sandbox SOFTAP=192.168.4.1:80` in REPO, with a private
REPO/build bind-mounted from OUT_DIR so a developer's own sandbox or demo files are never touched.
`--heap` (a local memory investigation only) runs `rmkit sandbox --heap` directly instead, as the
Makefile has no heap knob.

Writes OUT_DIR/report.json: the namespace's net inode, the SANDBOX info (minus secrets), each CLI
command's argv/exit code/stdout/stderr, whether the sandbox stopped by itself on SIGTERM and which
processes were left in the namespace afterwards. Progress goes to stderr. Everything it starts is
stopped before it exits; being the namespace's pid 1, its exit also kills anything that would remain.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

# Espressif's CLI hard-codes the ESP32 SoftAP default address 192.168.4.1:80 for the softap transport
# (docs/protocol.md 1.1); it exists only on this private namespace's loopback. The namespace's network, the
# CLI's environment and its runs, the sandbox as a child process and the init's last check are the product's
# (make espcli-demo runs the same): one copy.
from rmkit.benchmarks.espcli_flow import SOFTAP_IP, cli_environment, softap_address_on_loopback
from rmkit.espcli import Secret, run_cli
from rmkit.netns import namespace_processes, reap_orphans
from rmkit.sandbox_process import SandboxEnded, SandboxProcess

SOFTAP = SOFTAP_IP + ":80"


def say(msg):
    print("netns-driver: " + msg, file=sys.stderr, flush=True)


def sandbox_command(repo, out, heap, user_mapping, cpu):
    if heap:
        return [str(repo / ".venv" / "bin" / "rmkit"), "sandbox", "--softap", SOFTAP, "--heap", heap,
                "--workdir", str(out / "build" / "sandbox"), "--user-mapping", user_mapping] + (["--cpu", cpu] if cpu else [])
    # the sandbox writes REPO/build/sandbox (emptied first): give this namespace its own build/
    private_build = out / "build"
    private_build.mkdir(parents=True, exist_ok=True)
    (repo / "build").mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(private_build), str(repo / "build")], check=True)
    # -o: never reinstall the venv in here (no network); `make test` ran setup already
    return ["make", "-s", "-C", str(repo), "-o", ".venv/.installed", "sandbox", "SOFTAP=" + SOFTAP,
            "USER_MAPPING=" + user_mapping] + (["CPU=" + cpu] if cpu else [])


def record_cli(out, args, env, stdin_text=""):
    """One CLI command, kept in the report and in espcli.log (secrets as ***)."""
    run = run_cli(args, env, stdin_text=stdin_text)
    say("esp-rainmaker-cli " + " ".join(run.args))
    with open(out / "espcli.log", "a") as f:
        f.write("$ esp-rainmaker-cli %s  (rc %s, %.1f s)\n%s%s\n" % (" ".join(run.args), run.rc, run.seconds,
                                                                     run.stdout, run.stderr))
    return {"args": run.args, "rc": run.rc, "stdout": run.stdout, "stderr": run.stderr, "seconds": run.seconds}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--heap")
    parser.add_argument("--user-mapping", default="both", help="the node's user_mapping setting (make sandbox USER_MAPPING=)")
    parser.add_argument("--cpu", help="esp32: the board computes at an ESP32's speed (make sandbox CPU=esp32)")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report = {"net_ns": os.readlink("/proc/self/ns/net"), "pid": os.getpid(), "commands": {}}
    # pid 1 of a pid namespace ignores signals it has no handler for: make SIGTERM end the run cleanly
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    softap_address_on_loopback()
    argv = sandbox_command(args.repo, out, args.heap, args.user_mapping, args.cpu)
    say("starting " + " ".join(argv))
    # the boards' runtime files (pty links, compiled simulator modules) private to this run as well
    sandbox = SandboxProcess(argv, out / "sandbox.stdout", out / "sandbox.stderr",
                             env=dict(os.environ, RMKIT_RUNTIME_DIR=str(out / "run"))).start()
    try:
        try:
            info = sandbox.wait_ready()
        except SandboxEnded as exc:
            report["error"] = f"{exc}; see sandbox.stderr"
            return
        report["sandbox"] = {k: v for k, v in info.items() if k not in ("password", "pop", "passphrase")}
        env = cli_environment(out / "espcli")
        commands = report["commands"]
        commands["profile_add"] = record_cli(out, ["profile", "add", "local", "--base-url", info["cloud_url"]], env)
        commands["profile_switch"] = record_cli(out, ["profile", "switch", "local"], env)
        commands["login"] = record_cli(out, ["login", "--user_name", info["user"], "--password",
                                             Secret(info["password"])], env)
        commands["provision"] = record_cli(out, ["provision", "--pop", Secret(info["pop"]), "--ssid", info["ssid"],
                                                 "--passphrase", Secret(info["passphrase"]), "--no-retry"], env,
                                           stdin_text="\n")
        commands["getnodes"] = record_cli(out, ["getnodes"], env)
    finally:
        report["sandbox_alive_before_stop"] = sandbox.alive
        report["sandbox_stopped_cleanly"] = sandbox.stop()
        report["zombies_seen"] = [p for p in namespace_processes() if p["state"] == "Z"]
        report["orphans_reaped"] = reap_orphans()
        report["leftovers"] = namespace_processes()
        for proc in report["leftovers"]:  # report them, then end them: nothing may outlive the test
            try:
                os.kill(proc["pid"], signal.SIGKILL)
            except OSError:
                pass
        (out / "report.json").write_text(json.dumps(report, indent=1))
        say("report written")


if __name__ == "__main__":
    main()
