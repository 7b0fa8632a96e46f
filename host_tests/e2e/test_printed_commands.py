"""Every command line that `make vboard` and `make sandbox` print works when pasted into a shell whose
venv is not activated: each is run here as printed (interactive ones in a terminal, left with Ctrl-])."""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.paths import REPO_ROOT, VENV_BIN
from support.wait import wait_until

# a printed command: an indented line that starts with `make` or a program of the project's venv
COMMAND = re.compile(r"^\s+((?:make|/\S+/(?:mpremote|ampy|rmkit|esptool))\s.*)$")


def printed_commands(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", "", text)  # shell line continuations
    return [m.group(1).strip() for line in joined.splitlines() if (m := COMMAND.match(line))]


def shell_env(runtime_dir: Path) -> dict:
    """A shell as a user has it: no venv on PATH, nothing of the test's own environment."""
    path = ":".join(p for p in os.environ.get("PATH", "").split(":") if not p.startswith(str(VENV_BIN)))
    return {"PATH": path or "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
            "RMKIT_RUNTIME_DIR": str(runtime_dir), "LANG": "C.UTF-8"}


def run_in_terminal(command: str, env: dict, connected: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """Run an interactive command in a pty, wait for `connected`, leave with Ctrl-]."""
    argv = shlex.split(command)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, as a shell would start it
        os.chdir(REPO_ROOT)
        try:
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    out, left, code = b"", False, None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # the child closed the terminal: it exited
                    break
                if not data:
                    break
                out += data
            if not left and connected in out:
                # at once: a byte typed before the terminal goes raw is kept (both switch with TCSANOW)
                os.write(fd, b"\x1d")
                left = True
        done = wait_until(lambda: (got := os.waitpid(pid, os.WNOHANG))[0] == pid and got, 10, interval=0.05,
                          what=f"{command!r} to exit after Ctrl-]")
        code = os.waitstatus_to_exitcode(done[1])
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(fd)
    assert left, f"{command!r} never showed {connected!r}:\n{out.decode(errors='replace')}"
    assert code == 0, f"{command!r} exited with {code}:\n{out.decode(errors='replace')}"
    return code, out


def run_printed(command: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(shlex.split(command), cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command!r} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
    return result


def check_every_command(banner: str, env: dict) -> list[str]:
    """Run each command in `banner`; returns the ones run, for the caller to check that all kinds were."""
    commands = printed_commands(banner)
    for command in commands:
        words = shlex.split(command)
        if words[-1] == "repl" or words[:2] == ["make", "repl"] or "repl" in words[1:2]:
            marker = b"Connected"  # mpremote: "Connected to MicroPython at ..."; rmkit repl: "Connected to <name>"
            run_in_terminal(command, env, marker)
        elif words[-2:] == ["--user-id", "my-user"] or "provision" in words[1:2]:
            continue  # run by the caller: it changes the board
        else:
            run_printed(command, env)
    return commands


def start_and_read(argv: list[str], env: dict, until: str, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    text = ""
    deadline = time.monotonic() + timeout
    while until not in text:
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, f"{argv} stopped before {until!r}:\n{text}"
        text += line
    return proc, text


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_every_command_make_vboard_prints_works_when_pasted(tmp_path):
    env = shell_env(tmp_path / "run")
    flash = tmp_path / "flash"
    board, banner = start_and_read(["make", "vboard", "BOARD=pasted", f"FLASH={flash}"], env,
                                   "Ctrl-C stops the board.")
    try:
        commands = check_every_command(banner, env)
        kinds = {"mpremote exec", "mpremote repl", "ampy", "make repl", "rmkit repl", "make deploy",
                 "esptool chip-id"}
        seen = {k for k in kinds for c in commands if all(w in c for w in k.split())}
        assert seen == kinds, (kinds - seen, banner)
        assert (flash / "main.py").exists() or (flash / "main.mpy").exists(), "the printed deploy did not deploy"
    finally:
        stop(board)

    # with firmware on its flash the board says how to provision it, PoP and Wi-Fi included
    board, banner = start_and_read(["make", "vboard", "BOARD=pasted", f"FLASH={flash}"], env,
                                   "Ctrl-C stops the board.")
    try:
        assert "derived from the MAC" in banner and "'rmkit-lab'" in banner, banner
        provision = [c for c in printed_commands(banner) if " provision " in c]
        assert len(provision) == 1, banner
        result = run_printed(provision[0], env)
        assert re.search(r"node.id\s+[0-9A-F]{12}", result.stdout + result.stderr), result.stdout + result.stderr
    finally:
        stop(board)


def test_every_command_the_sandbox_prints_works_when_pasted(tmp_path):
    env = shell_env(tmp_path / "run")
    sandbox, banner = start_and_read([str(VENV_BIN / "rmkit"), "sandbox", "--workdir", str(tmp_path / "sb")], env,
                                     "Ctrl-C stops everything.", timeout=90)
    try:
        commands = check_every_command(banner, env)
        assert sum(("repl" in c) for c in commands) == 3, banner  # mpremote, make and rmkit
        provision = [c for c in commands if " provision " in c]
        assert len(provision) == 1, banner
        result = run_printed(provision[0], env)
        assert "confirmed" in result.stdout, result.stdout + result.stderr
    finally:
        stop(sandbox)
    assert sandbox.returncode == 0
    assert not list((tmp_path / "run").glob("*.json")), "the sandbox left its board's record behind"


@pytest.mark.parametrize("line, expected", [
    ("  /x/.venv/bin/rmkit provision --host a:1 \\\n      --user-id u", ["/x/.venv/bin/rmkit provision --host a:1 --user-id u"]),
    ("  make repl BOARD=b1", ["make repl BOARD=b1"]),
    ("make repl at the start of a sentence is prose", []),
    ("  rmkit repl (not a path: would need an activated venv)", []),
])
def test_printed_commands_are_recognised(line, expected):
    assert printed_commands(line) == expected
