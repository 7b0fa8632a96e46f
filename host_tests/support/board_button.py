"""Pressing a virtual board's BOOT button the way a person does: hold it until the node says on its console
that the hold is long enough (docs/protocol.md 5.5), then let go."""

from __future__ import annotations

# what the node logs once the button has been held long enough for each reset (rmnode.board)
WIFI_RESET_HOLD = r"board: button held 3 s: release now for a Wi-Fi reset, keep holding for a factory reset"
FACTORY_RESET_HOLD = r"board: button held 10 s: release for a factory reset"


def hold_button_until(board, pattern: str, since: int, timeout: float = 30.0) -> None:
    """Hold the board's BOOT button until the node logs `pattern` after log offset `since`, then release it."""
    board.hold_button()
    try:
        board.wait_for_log(pattern, since=since, timeout=timeout)
    finally:
        board.release_button()
