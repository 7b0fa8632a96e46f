"""wait_until: the one polling helper of the host tests. Every wait on an event that cannot be delivered
(a file that grows, a status behind an HTTP API, a process's state) polls through here."""

from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition", detail: Optional[Callable[[], str]] = None) -> T:
    """Poll `predicate` until it returns a truthy value (returned) or fail after `timeout` seconds; the
    failure names `what` and, when given, adds `detail()` (a log's tail, the values seen so far)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            message = f"timed out after {timeout:g} s waiting for {what}"
            raise AssertionError(message + (f"\n{detail()}" if detail else ""))
        time.sleep(interval)  # the poll interval
