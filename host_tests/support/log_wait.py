"""Waiting for a line in a log that a running process writes (the cloud's, the broker's)."""

from __future__ import annotations

import re
from pathlib import Path

from support.wait import wait_until


def wait_for_log_line(path: Path, pattern: str, timeout: float, offset: int = 0, what: str = "cloud") -> re.Match:
    """The first match of `pattern` in `path` after byte `offset`, polled until `timeout` seconds; the
    failure names the pattern and shows the log's tail."""
    regex = re.compile(pattern)

    def text() -> str:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    return wait_until(lambda: regex.search(text()), timeout, what=f"{what} to log {pattern!r}",
                      detail=lambda: "log tail:\n" + "\n".join(text().splitlines()[-15:]))
