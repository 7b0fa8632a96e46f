"""Waiting for a mapping request's final status at the cloud, as a client of the secret-key flow does: poll, and
keep every status seen, so a test can also check what came before the final one."""

from __future__ import annotations

import time


def poll_until_final(client, request_id: str, give_up_s: float = 30.0) -> list:
    """Every status the cloud returns, polling every 0.1 s until a final one (the last in the list)."""
    statuses = []
    deadline = time.monotonic() + give_up_s
    while time.monotonic() < deadline:
        statuses.append(client.mapping_status(request_id))
        if statuses[-1] in ("confirmed", "timedout", "discarded"):
            return statuses
        time.sleep(0.1)
    raise AssertionError(f"request {request_id} not final after {give_up_s:g} s: {statuses[-5:]}")
