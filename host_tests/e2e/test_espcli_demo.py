"""`make espcli-demo`: Espressif's esp-rainmaker-cli against a sandbox, end to end, as one command with nothing to
paste. It shows the CLI's own output, ending with the CLI's line that the node was added to the account, and
leaves nothing running: not after success, not when the CLI dies midway, not after Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.paths import ESPCLI_BIN, REPO_ROOT
from support.wait import wait_until

ADDED = re.compile(r"Node (\S+ )?added to your account successfully!")


def net_namespace(pid: int):
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def processes_in(net_ns: str) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and net_namespace(int(entry)) == net_ns:
            try:
                found.append((int(entry), Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()))
            except OSError:
                pass
    return found


def process_state(pid: int) -> str:
    """The state letter /proc gives (R, S, D, T, Z...), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


class DemoRun:
    """`make espcli-demo WORKDIR=...` in the background, its two streams collected line by line, and the network
    namespace it runs in, found by its init's command line."""

    def __init__(self, workdir: Path):
        if not (ESPCLI_BIN / "esp-rainmaker-cli").exists():
            pytest.fail("esp-rainmaker-cli is missing: run `make espcli` (make test does)")
        self.workdir = workdir
        self.proc = subprocess.Popen(["make", "-s", "-o", ".venv/.installed", "-o", ".venv-espcli/.installed",
                                      "espcli-demo", f"WORKDIR={workdir}"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, l=lines: l.extend(s), daemon=True).start()
        self.net_ns = None
        threading.Thread(target=self._find_namespace, daemon=True).start()

    def _find_namespace(self) -> None:
        """Note the namespace of the demo's inside half as soon as it runs (a thread: the test reads it later)."""
        marker = f"rmkit.espcli_demo --inside {self.workdir}"
        ours = net_namespace(os.getpid())

        def found() -> bool:
            for entry in os.listdir("/proc"):
                try:
                    if entry.isdigit() and marker in Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode():
                        # `unshare` has the marker on its command line before it has entered the new namespace
                        if net_namespace(int(entry)) != ours:
                            self.net_ns = net_namespace(int(entry))
                except OSError:
                    pass
            return self.net_ns is not None or self.proc.poll() is not None

        wait_until(found, 600, interval=0.05, what="the demo's namespace")

    def wait_for(self, lines: list, text: str, timeout: float = 120) -> None:
        wait_until(lambda: any(text in line for line in lines) or self.proc.poll() is not None, timeout=timeout,
                   what=repr(text))
        assert any(text in line for line in lines), f"no {text!r}:\n{''.join(self.out)}{''.join(self.err)}"

    def finish(self, timeout: float = 180) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def assert_nothing_left(self) -> None:
        assert self.net_ns is not None, "never saw the demo's namespace"
        wait_until(lambda: not processes_in(self.net_ns), timeout=10, what="the namespace's processes to end",
                   detail=lambda: "still there: " + "; ".join(f"{pid} {process_state(pid)} {cmd}"
                                                              for pid, cmd in processes_in(self.net_ns)))
        leftovers = [cmd for pid, cmd in processes_in_host_mentioning(self.workdir)]
        assert leftovers == [], leftovers


def processes_in_host_mentioning(path: Path) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if entry.isdigit() and str(path) in cmdline:
            found.append((int(entry), cmdline))
    return found


def test_one_command_runs_espressifs_cli_to_the_node_on_the_account_and_leaves_nothing_running(tmp_path):
    demo = DemoRun(tmp_path / "demo")
    assert demo.finish() == 0, "".join(demo.out + demo.err)
    out = [line.rstrip("\n") for line in demo.out if line.strip()]
    assert ADDED.search(out[-1]), out[-5:]  # the CLI's own last words
    commands = [line for line in out if line.startswith("$ esp-rainmaker-cli ")]
    assert [c.split()[2] for c in commands] == ["profile", "profile", "login", "provision"], commands
    assert "--password ***" in commands[2] and "--pop *** --ssid rmkit-lab --passphrase *** --no-retry" in commands[3]
    assert "Sending user information to node - Successful" in out and "==== WiFi state: Connected ====" in out
    demo.assert_nothing_left()


def test_the_cli_killed_midway_is_one_line_and_leaves_nothing_running(tmp_path):
    demo = DemoRun(tmp_path / "demo")
    demo.wait_for(demo.out, "$ esp-rainmaker-cli provision")
    cli = wait_until(lambda: [pid for pid, cmd in processes_in(demo.net_ns or "none")
                              if "esp-rainmaker-cli" in cmd and " provision " in cmd], timeout=30,
                     what="the CLI's provision process")
    os.kill(cli[0], signal.SIGKILL)
    assert demo.finish() != 0
    assert not any(ADDED.search(line) for line in demo.out)
    said = [line.rstrip("\n") for line in demo.err if line.startswith("espcli-demo: ")]
    assert said[-1].startswith("espcli-demo: esp-rainmaker-cli provision was killed (SIGKILL); stopped the sandbox "
                               "and everything it started"), said
    assert "Traceback" not in "".join(demo.err)
    demo.assert_nothing_left()


def test_ctrl_c_stops_everything(tmp_path):
    demo = DemoRun(tmp_path / "demo")
    demo.wait_for(demo.err, "sandbox ready")
    os.killpg(demo.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to make and rmkit
    assert demo.finish() != 0
    said = [line.rstrip("\n") for line in demo.err if line.startswith("espcli-demo: ")]
    assert said[-1].startswith("espcli-demo: interrupted; stopped the sandbox and everything it started"), said
    assert "Traceback" not in "".join(demo.err)
    demo.assert_nothing_left()
