"""Waiting for a mapping request's final status at the cloud, as a client of the secret-key flow does: poll, and
keep every status seen, so a test can also check what came before the final one."""

from __future__ import annotations

from support.wait import wait_until

FINAL = ("confirmed", "timedout", "discarded")


def poll_until_final(client, request_id: str, give_up_s: float = 30.0) -> list:
    """Every status the cloud returns, polling every 0.1 s until a final one (the last in the list)."""
    statuses = []

    def final() -> bool:
        statuses.append(client.mapping_status(request_id))
        return statuses[-1] in FINAL

    wait_until(final, give_up_s, interval=0.1, what=f"request {request_id} to be final",
               detail=lambda: f"last statuses: {statuses[-5:]}")
    return statuses
