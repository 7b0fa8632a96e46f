"""Fixtures for provisioning tests: the firmware's HTTP server and provisioning node run as real processes
(CPython and the MicroPython unix port) on 127.0.0.1 at a free port, stopped at teardown."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rmkit.net import free_port, wait_for_port

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
FIRMWARE = REPO_ROOT / "firmware"
MICROPYTHON = REPO_ROOT / ".venv" / "bin" / "micropython"

INTERPRETERS = {
    "cpython": [sys.executable],
    "micropython": [str(MICROPYTHON)],
}


@dataclass
class NodeProcess:
    """A server process started by a test: its port, its log file and the Popen handle."""

    port: int
    log_path: Path
    proc: subprocess.Popen
    interpreter: str
    extra: dict = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_process(interpreter: str, script: Path, args: list[str], log_path: Path,
                  port: int, timeout: float = 15.0) -> NodeProcess:
    """Start `script` with `args` under `interpreter`, wait until it listens on 127.0.0.1:port."""
    log_file = open(log_path, "w")
    proc = subprocess.Popen(INTERPRETERS[interpreter] + [str(script)] + args,
                            stdout=log_file, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT))
    log_file.close()
    node = NodeProcess(port=port, log_path=log_path, proc=proc, interpreter=interpreter)
    try:
        wait_for_port(port, timeout=timeout, alive=node.alive)
    except BaseException:
        stop_process(node)
        raise RuntimeError(f"{script.name} under {interpreter} did not start:\n{node.log_text()}")
    return node


def stop_process(node: NodeProcess) -> None:
    if node.proc.poll() is None:
        node.proc.terminate()
        try:
            node.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(timeout=5)


@pytest.fixture(params=sorted(INTERPRETERS))
def http_echo_server(request, artifacts_dir):
    """rmnode.http.ProvHttpServer with an echo dispatch (host_tests/launch_http_echo.py), read timeout 1 s,
    idle timeout 2 s, under CPython and under the MicroPython unix port."""
    port = free_port()
    node = start_process(request.param, HERE / "launch_http_echo.py",
                         [str(FIRMWARE), str(port), "1.0", "2.0"],
                         artifacts_dir / f"http_echo_{request.param}.log", port)
    node.extra.update(read_timeout_s=1.0, idle_timeout_s=2.0)
    try:
        yield node
    finally:
        stop_process(node)
