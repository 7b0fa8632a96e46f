"""Access tokens already checked against the database, kept until a session anywhere ends.

Every authenticated request carries an access token whose session (docs/protocol.md 6: logout2 ends
it) must still be open. The signature and expiry are checked on every request (microseconds); the
session lookup is what this cache saves. An entry remembers the storage's revocation epoch from
*before* its session was read: once any process sharing the database commits a logout, the epoch
moves and every older entry is checked again, so a logged-out token is refused by the very next
request, whichever process answers it.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from rmkit.cloud.tokens import AccessClaims

MAX_ENTRIES = 20_000  # one per live session; past this the cache starts over rather than grow


class TokenCache:
    def __init__(self, epoch: Callable[[], int], max_entries: int = MAX_ENTRIES):
        self._epoch = epoch
        self._max_entries = max_entries
        self._entries: dict[str, tuple[AccessClaims, int]] = {}
        self._lock = threading.Lock()

    def current_epoch(self) -> int:
        return self._epoch()

    def get(self, token: str) -> Optional[AccessClaims]:
        """The claims of a token whose session was open at the current epoch, else None."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        claims, epoch = entry
        if epoch != self._epoch():
            with self._lock:
                self._entries.pop(token, None)
            return None
        return claims

    def put(self, token: str, claims: AccessClaims, epoch_before_check: int) -> None:
        with self._lock:
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[token] = (claims, epoch_before_check)
