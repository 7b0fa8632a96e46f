"""Runs INSIDE a private user + network + mount + pid namespace (`unshare -rn -p -f -m --mount-proc`): the
sandbox with its node at 192.168.4.1:80 (the ESP32 SoftAP default, on this namespace's loopback only),
then Espressif's unmodified esp-rainmaker-cli against it.

Usage: launch_e2e_netns.py OUT_DIR --repo REPO --espcli ESPCLI [--heap 512K]

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
import time
from pathlib import Path

# Espressif's CLI hard-codes the ESP32 SoftAP default address 192.168.4.1:80 for the softap transport
# (docs/protocol.md 1.1); it exists only on this private namespace's loopback. The namespace's network and
# the CLI's environment are make bench's too (rmkit.benchmarks.espcli_flow): one copy.
from rmkit.benchmarks.espcli_flow import SOFTAP_IP, cli_environment, softap_address_on_loopback

SOFTAP = SOFTAP_IP + ":80"
SANDBOX_READY_S = 60
CLI_TIMEOUT_S = 90


def say(msg):
    print("netns-driver: " + msg, file=sys.stderr, flush=True)


def start_sandbox(repo, out, heap, user_mapping, cpu):
    if heap:
        argv = [str(repo / ".venv" / "bin" / "rmkit"), "sandbox", "--softap", SOFTAP, "--heap", heap,
                "--workdir", str(out / "build" / "sandbox"), "--user-mapping", user_mapping] + (["--cpu", cpu] if cpu else [])
    else:
        # the sandbox writes REPO/build/sandbox (emptied first): give this namespace its own build/
        private_build = out / "build"
        private_build.mkdir(parents=True, exist_ok=True)
        (repo / "build").mkdir(exist_ok=True)
        subprocess.run(["mount", "--bind", str(private_build), str(repo / "build")], check=True)
        # -o: never reinstall the venv in here (no network); `make test` ran setup already
        argv = ["make", "-s", "-C", str(repo), "-o", ".venv/.installed", "sandbox", "SOFTAP=" + SOFTAP,
                "USER_MAPPING=" + user_mapping] + (["CPU=" + cpu] if cpu else [])
    say("starting " + " ".join(argv))
    log = open(out / "sandbox.stderr", "w")
    # the boards' runtime files (pty links, compiled simulator modules) private to this run as well
    env = dict(os.environ, RMKIT_RUNTIME_DIR=str(out / "run"))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1, env=env)
    return proc, log


def wait_for_sandbox_line(proc, out_file):
    """Read the sandbox's stdout until its `SANDBOX {json}` line; the rest is copied on a thread."""
    import threading

    found = {}
    ready = threading.Event()

    def pump():
        with open(out_file, "a") as copy:
            for line in proc.stdout:
                copy.write(line)
                copy.flush()
                if line.startswith("SANDBOX ") and not found:
                    found.update(json.loads(line[len("SANDBOX "):]))
                    ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    ready.wait(SANDBOX_READY_S)
    return found or None


def run_cli(espcli, env, args, out, stdin_text="", timeout=CLI_TIMEOUT_S):
    # "secret:" marks an argument that must not reach the report or the log
    shown = [a if not a.startswith("secret:") else "***" for a in args]
    argv = [espcli] + [a[len("secret:"):] if a.startswith("secret:") else a for a in args]
    say("esp-rainmaker-cli " + " ".join(shown))
    started = time.monotonic()
    try:
        run = subprocess.run(argv, env=env, input=stdin_text, capture_output=True, text=True, timeout=timeout)
        rc, stdout, stderr = run.returncode, run.stdout, run.stderr
    except subprocess.TimeoutExpired as exc:
        rc = "timeout"
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    result = {"args": shown, "rc": rc, "stdout": stdout, "stderr": stderr,
              "seconds": round(time.monotonic() - started, 2)}
    with open(out / "espcli.log", "a") as f:
        f.write("$ esp-rainmaker-cli %s  (rc %s, %.1f s)\n%s%s\n" % (" ".join(shown), rc, result["seconds"],
                                                                     stdout, stderr))
    return result


def stop_sandbox(proc, log, stdout_file):
    """SIGTERM to the sandbox (make passes it on to `rmkit sandbox`); True if the sandbox said it stopped
    everything (its "sandbox: stopped" line) within 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()
    time.sleep(0.2)  # the stdout pump's last lines
    return "sandbox: stopped" in Path(stdout_file).read_text()


def reap_orphans():
    """As the namespace's init, collect orphans that already exited (zombies are dead, not leftovers)."""
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped.append({"pid": pid, "status": status})
    return reaped


def namespace_processes():
    """Every other live process in this pid namespace (--mount-proc: /proc shows only ours)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            stat = Path("/proc/%s/stat" % entry).read_text()
            cmdline = Path("/proc/%s/cmdline" % entry).read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state = stat[stat.rindex(")") + 2:].split()[0]
        found.append({"pid": int(entry), "comm": comm, "state": state, "cmdline": cmdline.strip()})
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--espcli", required=True)
    parser.add_argument("--heap")
    parser.add_argument("--user-mapping", default="both", help="the node's user_mapping setting (make sandbox USER_MAPPING=)")
    parser.add_argument("--cpu", help="esp32: the board computes at an ESP32's speed (make sandbox CPU=esp32)")
    args = parser.parse_args()
    out, espcli = args.out, args.espcli
    out.mkdir(parents=True, exist_ok=True)
    report = {"net_ns": os.readlink("/proc/self/ns/net"), "pid": os.getpid(), "commands": {}}
    # pid 1 of a pid namespace ignores signals it has no handler for: make SIGTERM end the run cleanly
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    softap_address_on_loopback()
    stdout_file = out / "sandbox.stdout"
    sandbox, sandbox_log = start_sandbox(args.repo, out, args.heap, args.user_mapping, args.cpu)
    try:
        info = wait_for_sandbox_line(sandbox, stdout_file)
        if info is None:
            code = sandbox.poll()
            report["error"] = ("sandbox exited with status %s before its SANDBOX line" % code if code is not None
                               else "no SANDBOX line within %d s" % SANDBOX_READY_S) + "; see sandbox.stderr"
            return
        report["sandbox"] = {k: v for k, v in info.items() if k not in ("password", "pop", "passphrase")}
        home = out / "espcli"
        env = cli_environment(home)
        commands = report["commands"]
        commands["profile_add"] = run_cli(espcli, env, ["profile", "add", "local", "--base-url", info["cloud_url"]],
                                          out)
        commands["profile_switch"] = run_cli(espcli, env, ["profile", "switch", "local"], out)
        commands["login"] = run_cli(espcli, env, ["login", "--user_name", info["user"],
                                                  "--password", "secret:" + info["password"]], out)
        commands["provision"] = run_cli(espcli, env, ["provision", "--pop", "secret:" + info["pop"],
                                                      "--ssid", info["ssid"],
                                                      "--passphrase", "secret:" + info["passphrase"],
                                                      "--no-retry"], out, stdin_text="\n")
        commands["getnodes"] = run_cli(espcli, env, ["getnodes"], out)
    finally:
        report["sandbox_alive_before_stop"] = sandbox.poll() is None
        report["sandbox_stopped_cleanly"] = stop_sandbox(sandbox, sandbox_log, stdout_file)
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
