"""Waiting for a line in a log that a running process writes (the cloud's, the broker's)."""

from __future__ import annotations

import re
import time
from pathlib import Path


def wait_for_log_line(path: Path, pattern: str, timeout: float, offset: int = 0, what: str = "cloud") -> re.Match:
    """The first match of `pattern` in `path` after byte `offset`, polled until `timeout` seconds; the
    failure names the pattern and shows the log's tail."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            text = ""
        match = regex.search(text)
        if match:
            return match
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never logged {pattern!r} within {timeout:g} s; log tail:\n"
                                 + "\n".join(text.splitlines()[-15:]))
        time.sleep(0.02)
