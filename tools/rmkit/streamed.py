"""Run a command, read its output line by line as it comes, and kill it on a timer.

The one place for that idiom: rmkit deploy (mpremote), the benchmarks (esp-rainmaker-cli, a node short
of heap) and the host tests use it. Output is stdout and stderr together, as text.
"""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Finished:
    output: str          # every line read, in order (up to the stop, when on_line stopped it)
    returncode: int      # negative: killed by that signal (a timeout or a stop is SIGKILL)
    timed_out: bool      # killed because `timeout` passed
    stopped: bool        # killed because on_line returned True


def run_streamed(argv: list, *, timeout: float, on_line: Optional[Callable[[str], Optional[bool]]] = None,
                 stdin_text: Optional[str] = None, **popen_kwargs) -> Finished:
    """Run `argv` (keyword arguments go to subprocess.Popen: env, cwd, ...). `on_line` sees each output
    line without its line end as it comes; returning True stops the command at once (a node that hit a
    MemoryError retries forever). `stdin_text` is written to its stdin, which is then closed; without
    it stdin is /dev/null. Past `timeout` seconds the command is killed. The command is never left
    running: whatever ends this call (an exception from on_line too) kills and reaps it."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen_kwargs)
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, expire)
    timer.start()
    lines: list = []
    stopped = False
    try:
        if stdin_text is not None:
            try:
                proc.stdin.write(stdin_text)
                proc.stdin.close()
            except BrokenPipeError:  # it ended before reading: its output says why
                pass
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None and on_line(line.rstrip("\r\n")):
                stopped = True
                break
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    return Finished("".join(lines), proc.returncode, timed_out.is_set(), stopped)
