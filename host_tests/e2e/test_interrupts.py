"""Ctrl-C stops every long-running command the same way, also when it was started as a background job
from a script: `cmd &` starts it with SIGINT ignored, and a Python program then gets no
KeyboardInterrupt unless it asks for one. Ctrl-C reaches the whole foreground process group, so the
signal is sent to the group here, make included."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from support.paths import REPO_ROOT, VENV_BIN
from support.wait import wait_until

RMKIT = str(VENV_BIN / "rmkit")


def _ignore_sigint():
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` does in a non-interactive shell


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task"):
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = {int(p) for p in f.read().split()}
            except FileNotFoundError:
                continue
            todo += children - found
            found |= children
    return found


COMMANDS = {
    "make sandbox": (["make", "sandbox", "WORKDIR={tmp}/sb"], "Ctrl-C stops everything."),
    "rmkit sandbox --no-board (make cloud)": ([RMKIT, "sandbox", "--no-board", "--workdir", "{tmp}/cloud"],
                                              "Ctrl-C stops everything."),
    "rmkit demo": ([RMKIT, "demo", "--workdir", "{tmp}/demo"], "booting virtual ESP32"),
    "rmkit broker": ([RMKIT, "broker", "--pki-dir", "{tmp}/pki", "--workdir", "{tmp}/broker"], "Ctrl-C stops"),
    "rmkit vboard": ([RMKIT, "vboard", "--name", "intr", "--flash", "{tmp}/flash", "-q"], "Ctrl-C stops the board."),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_ctrl_c_stops_a_command_started_with_sigint_ignored(name, tmp_path):
    argv, ready = COMMANDS[name]
    argv = [a.format(tmp=tmp_path) for a in argv]
    if name == "rmkit broker":
        subprocess.run([RMKIT, "pki", "--dir", str(tmp_path / "pki"), "init"], check=True, capture_output=True)
    env = dict(os.environ, RMKIT_RUNTIME_DIR=str(tmp_path / "run"))
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=_ignore_sigint)
    started: set[int] = set()
    try:
        out, deadline = "", time.monotonic() + 90
        while ready not in out:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, f"{name} never got ready:\n{out}"
            out += line
        started = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            for pid in _descendants(proc.pid) | started:  # mosquitto runs in a session of its own
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{name} ignored Ctrl-C")
    assert "Traceback" not in out + rest, out + rest
    if name == "rmkit demo":  # stopped where it was, not run to its end
        assert "interrupted" in rest and proc.returncode != 0, rest
    wait_until(lambda: not [p for p in started if os.path.exists(f"/proc/{p}")], 5, interval=0.05,
               what=f"the processes {name} started to end after Ctrl-C")
