"""Espressif's esp-rainmaker-cli run as a user runs it, one command at a time: its output shown as it comes
and kept, the secrets in its command line shown as ***.

The CLI lives in a venv of its own (`make espcli`: .venv-espcli); its environment (profiles, tokens and logs
in a folder of the caller's, no proxy) is rmkit.benchmarks.espcli_flow's. Its exit status is unreliable
(docs/protocol.md 6): callers judge a run by the texts it prints.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from rmkit.benchmarks.espcli_flow import ESPCLI

TIMEOUT_S = 90.0  # its provisioning polls every 5 s; a whole flow takes about 10 s


class Secret(str):
    """A command-line argument shown as *** wherever the command is shown or recorded."""


@dataclass
class CliRun:
    args: list[str]        # as shown: secrets as ***
    rc: object             # the exit status, or "timeout"
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def shown(args: list[str]) -> list[str]:
    return ["***" if isinstance(arg, Secret) else arg for arg in args]


def run_cli(args: list[str], env: dict, stdin_text: str = "", timeout: float = TIMEOUT_S,
            echo: Optional[Callable[[str, str], None]] = None) -> CliRun:
    """`esp-rainmaker-cli ARGS`; `echo(stream, line)` sees each line of its output ("stdout" or "stderr") as it
    comes. A run past `timeout` is killed (rc "timeout"); a run killed from outside has a negative rc."""
    started = time.monotonic()
    proc = subprocess.Popen([str(ESPCLI), *args], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    kept = {"stdout": [], "stderr": []}

    def pump(stream: str) -> None:
        for line in getattr(proc, stream):
            kept[stream].append(line)
            if echo is not None:
                echo(stream, line.rstrip("\n"))

    readers = [threading.Thread(target=pump, args=(stream,), daemon=True) for stream in kept]
    for reader in readers:
        reader.start()
    try:
        proc.stdin.write(stdin_text)
        proc.stdin.close()
    except BrokenPipeError:  # it ended without reading (killed, or failed at once)
        pass
    try:
        rc: object = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = "timeout"
    finally:
        if proc.poll() is None:  # interrupted here: the CLI goes too
            proc.kill()
            proc.wait()
    for reader in readers:
        reader.join(timeout=5)
    return CliRun(shown(args), rc, "".join(kept["stdout"]), "".join(kept["stderr"]),
                  round(time.monotonic() - started, 2))
