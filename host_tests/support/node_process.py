"""NodeProcess: a process a test started (a node or server under CPython or the MicroPython unix port).

Its output (stdout + stderr) is copied line by line to its log file (flushed, so a failing test's artifacts
hold it) and kept in `.lines`; the process gets a session of its own, and stop()/kill() end its whole group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Optional

from rmkit.net import wait_for_port


class NodeProcess:
    def __init__(self, command: list, log_path: Path, env: Optional[dict] = None, cwd=None,
                 port: Optional[int] = None, interpreter: Optional[str] = None) -> None:
        self.command = [str(part) for part in command]
        self.log_path = Path(log_path)
        self.port = port  # where it listens, for servers
        self.interpreter = interpreter  # "cpython" / "micropython", for the tests' messages
        self.extra: dict = {}  # whatever the fixture that started it wants to hand on (e.g. its flash dir)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     errors="replace", env=None if env is None else dict(os.environ, **env),
                                     cwd=None if cwd is None else str(cwd), start_new_session=True)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_port(self, timeout: float = 15.0) -> "NodeProcess":
        """Block until the process listens on 127.0.0.1:port; RuntimeError with its output otherwise."""
        try:
            wait_for_port(self.port, timeout=timeout, alive=self.alive)
        except BaseException:
            self.stop()
            raise RuntimeError(f"{' '.join(self.command[:2])} did not start listening on port {self.port}:\n"
                               f"{self.output()}")
        return self

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 15.0) -> list[re.Match]:
        """Block until `pattern` (a regex) matched `count` lines; returns the matches."""
        regex = re.compile(pattern)

        def matches():
            return [m for m in (regex.search(line) for line in self.lines) if m]

        with self._cond:
            ok = self._cond.wait_for(lambda: len(matches()) >= count or self.proc.poll() is not None and
                                     not self._thread.is_alive(), timeout)
            found = matches()
        if len(found) < count:
            tail = "\n".join(self.lines[-15:])
            raise AssertionError(f"node: {count} x /{pattern}/ not seen within {timeout} s "
                                 f"({'exited %s' % self.proc.returncode if ok else 'timeout'}); log {self.log_path}:\n{tail}")
        return found

    def output(self) -> str:
        """Everything it printed so far."""
        with self._cond:
            return "\n".join(self.lines)

    log_text = output

    def wait_exit(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout)
        self._thread.join(5)
        return code

    def kill(self) -> None:
        """SIGKILL, like pulling the board's power."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._thread.join(5)

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 5 s; the log file is complete afterwards."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self._thread.join(5)
        if not self._log.closed:
            self._log.close()
