"""A sandbox (`rmkit sandbox` or `make sandbox`) run as a child process: started, its `SANDBOX {json}` line
awaited, and stopped by SIGTERM, which it answers by stopping everything it started ("sandbox: stopped").

Its standard output is copied to a file as it comes (the SANDBOX line is read from it on the way); its
standard error goes to another file, whose last line says why when it ends early.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path
from typing import Optional

READY_S = 90.0  # a first run compiles the firmware and the board's modules
STOP_S = 30.0
STOPPED_LINE = "sandbox: stopped"


class SandboxEnded(Exception):
    """The sandbox ended, or did not get ready, before its SANDBOX line; str() says why in one line."""


class SandboxProcess:
    """`argv` is the whole command (e.g. [python, -m, rmkit, sandbox, --softap, ...] or make ... sandbox)."""

    def __init__(self, argv: list[str], stdout_file: Path, stderr_file: Path, env: Optional[dict] = None,
                 cwd: Optional[Path] = None):
        self.argv = argv
        self.stdout_file = Path(stdout_file)
        self.stderr_file = Path(stderr_file)
        self.env = env
        self.cwd = cwd
        self.proc: Optional[subprocess.Popen] = None
        self.info: Optional[dict] = None
        self._ready = threading.Event()
        self._pump: Optional[threading.Thread] = None

    def start(self) -> "SandboxProcess":
        self._stderr = open(self.stderr_file, "w")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1,
                                     env=self.env, cwd=self.cwd)
        self._pump = threading.Thread(target=self._copy_stdout, name="sandbox-stdout", daemon=True)
        self._pump.start()
        return self

    def _copy_stdout(self) -> None:
        with open(self.stdout_file, "a") as copy:
            for line in self.proc.stdout:
                copy.write(line)
                copy.flush()
                if line.startswith("SANDBOX ") and self.info is None:
                    self.info = json.loads(line[len("SANDBOX "):])
                    self._ready.set()
        self._ready.set()  # its output ended: it has ended

    def wait_ready(self, timeout: float = READY_S) -> dict:
        """The SANDBOX line's information, or SandboxEnded with the sandbox's last error line."""
        self._ready.wait(timeout)
        if self.info is not None:
            return self.info
        code = self.proc.poll()
        if code is None:
            raise SandboxEnded(f"the sandbox printed no SANDBOX line within {timeout:.0f} s (see {self.stderr_file})")
        raise SandboxEnded(f"the sandbox ended (exit {code}) before it was ready: {self.last_error()}")

    def last_error(self) -> str:
        """The sandbox's last line on standard error, or where to look."""
        self._stderr.flush()
        lines = [line for line in self.stderr_file.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"nothing on its standard error ({self.stderr_file})"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> bool:
        """SIGTERM, as Ctrl-C would, then SIGKILL after STOP_S; True if it said it stopped everything."""
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._pump is not None:
            self._pump.join(timeout=5)  # its last lines
        self._stderr.close()
        return STOPPED_LINE in self.stdout_file.read_text(errors="replace")
