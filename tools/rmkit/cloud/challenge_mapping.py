"""Challenge-response user-node mapping (docs/protocol.md 7.1): issue a challenge, check the node's signature, map.

`initiate` gives the token's user a fresh challenge bound to a new request id, open for the timeout
the client asked for (at most MAX_LIFETIME_S). `verify` maps the node to that user when the
signature the client relays verifies with the node's own certificate (rmkit.cloud.node_registry).

A challenge is single use. Every verify that gets as far as the signature check settles it: the
request becomes `confirmed` (mapped) or `discarded` (refused), and any later verify of it is a
replay. A refused verify also spends the challenge, so a client cannot try node after node (or
signature after signature) against one challenge. A verify refused for its shape (bad hex, missing
fields: rmkit.cloud.api.inputs) or for a request that is not the user's changes nothing.

Every decision is one storage transaction and nothing lives in memory, so several HTTP processes
on one database agree: the state change is a compare-and-set on `status = 'requested'`, and of two
verifies racing for one challenge exactly one settles it. The signature is checked before that
transaction, outside the database's write lock (it is the expensive part, and the challenge text
it covers never changes). Writes go through a GroupCommitter, as the secret-key flow's do.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, replace
from typing import Callable, Optional

from rmkit.cloud.group_commit import GroupCommitter
from rmkit.cloud.mapping import CONFIRMED, REQUESTED, TIMEDOUT
from rmkit.cloud.node_registry import NodeRegistry, NoNodes
from rmkit.cloud.node_signature import UnsupportedNodeKey, signature_verifies
from rmkit.cloud.storage import MappingChallenge, Storage, StorageTx, now as wall_now

log = logging.getLogger("rmkit.cloud.mapping")

# esp-rainmaker-cli asks for 360 s; the TS SDK sends no timeout, and gets the same
DEFAULT_TIMEOUT_S = 360
MAX_LIFETIME_S = 3600  # a longer timeout is accepted but cut to this: a challenge is for one provisioning run
MAX_REQUESTED_TIMEOUT_S = 86400  # above this the timeout is nonsense: 400
# The node signs only 1..256 bytes of printable ASCII without spaces (0x21-0x7E), so that it cannot be
# made to sign a TLS transcript or other binary data: 48 random bytes as base64url are 64 such characters.
CHALLENGE_BYTES = 48
CHALLENGE_LENGTH = 64
MAX_OPEN_CHALLENGES = 100  # per user: open requests are rows in the database, and a client needs a few
# refused and unused challenges are kept this long after they expire, so a late status query still answers
RETENTION_S = 24 * 3600
DISCARDED = "discarded"


class ChallengeRefused(Exception):
    """A challenge-response request the cloud refuses; `.kind` says why (one of KINDS), the message in a line."""

    KINDS = ("unknown_request", "used", "expired", "node_unknown", "node_key_unsupported", "bad_signature",
             "too_many")

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ChallengeStatus:
    """A challenge-response request as the status query answers it (docs/protocol.md 6)."""
    request_id: str
    status: str  # requested, confirmed, discarded, timedout
    node_id: str


def new_challenge() -> str:
    """64 characters of base64url (A-Z a-z 0-9 - _), from 384 random bits."""
    return secrets.token_urlsafe(CHALLENGE_BYTES)  # 48 bytes are 16 whole base64 groups: no padding


class ChallengeService:
    """Issues challenges and verifies the nodes' answers; `clock` is injectable so tests never sleep."""

    def __init__(self, storage: Storage, registry: NodeRegistry = NoNodes(),
                 clock: Callable[[], float] = wall_now):
        self.storage = storage
        self.registry = registry
        self._clock = clock
        self._writes = GroupCommitter(storage)

    def initiate(self, user_id: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> MappingChallenge:
        """A new challenge for `user_id`, open for min(timeout_s, MAX_LIFETIME_S) seconds."""
        now = self._clock()
        lifetime = min(timeout_s, MAX_LIFETIME_S)
        challenge = MappingChallenge(secrets.token_hex(16), user_id, new_challenge(), REQUESTED, "", now,
                                     now + lifetime, now)

        def record(tx: StorageTx) -> None:
            if tx.count_open_challenges(user_id, now) >= MAX_OPEN_CHALLENGES:
                raise ChallengeRefused("too_many", f"this user already has {MAX_OPEN_CHALLENGES} open mapping "
                                       "challenges: use or let some expire first")
            tx.prune_challenges(now - RETENTION_S)
            tx.add_challenge(challenge)

        self._writes.run(record)
        log.info("mapping %s: challenge issued to user %s, open %d s", challenge.request_id, user_id, lifetime)
        return challenge

    def verify(self, user_id: str, request_id: str, node_id: str, signature: bytes) -> MappingChallenge:
        """Map `node_id` to `user_id` if `signature` is that node's signature of the request's challenge;
        the settled challenge, or ChallengeRefused."""
        with self.storage.read() as tx:
            challenge = tx.challenge(request_id)
        self._check_open(challenge, user_id, request_id, self._clock())
        refusal = self._check_signature(challenge, node_id, signature)
        settled = self._writes.run(lambda tx: self._settle(tx, user_id, request_id, node_id, refusal))
        if refusal is not None:
            log.info("mapping %s: node %s user %s -> %s (challenge response refused: %s)", request_id, node_id,
                     user_id, DISCARDED, refusal)
            raise refusal
        log.info("mapping %s: node %s user %s -> %s (challenge response verified)", request_id, node_id,
                 user_id, CONFIRMED)
        return settled

    def request_status(self, user_id: str, request_id: str) -> Optional[ChallengeStatus]:
        """The user's challenge-response request as the status query reports it; None if unknown or
        someone else's. An open challenge past its expiry reads `timedout` (nothing is written)."""
        with self.storage.read() as tx:
            challenge = tx.challenge(request_id)
        if challenge is None or challenge.user_id != user_id:
            return None
        status = challenge.status
        if status == REQUESTED and self._clock() > challenge.expires:
            status = TIMEDOUT
        return ChallengeStatus(challenge.request_id, status, challenge.node_id)

    # --------------------------------------------------------------------------------- helpers

    @staticmethod
    def _check_open(challenge: Optional[MappingChallenge], user_id: str, request_id: str, now: float) -> None:
        # unknown and another user's request look the same, and neither is touched
        if challenge is None or challenge.user_id != user_id:
            raise ChallengeRefused("unknown_request", f"mapping request {request_id} not found")
        if challenge.status != REQUESTED:
            raise ChallengeRefused("used", f"the challenge of request {request_id} was already used "
                                   f"({challenge.status}); initiate a new one")
        if now > challenge.expires:
            raise ChallengeRefused("expired", f"the challenge of request {request_id} has expired; "
                                   "initiate a new one")

    def _check_signature(self, challenge: MappingChallenge, node_id: str,
                         signature: bytes) -> Optional[ChallengeRefused]:
        """None when the signature verifies with the node's key, else the refusal to settle with."""
        try:
            key = self.registry.public_key(node_id)
        except UnsupportedNodeKey as exc:
            return ChallengeRefused("node_key_unsupported", f"node {node_id}'s certificate holds {exc}")
        if key is None:
            return ChallengeRefused("node_unknown", f"node {node_id} is unknown: this cloud has no certificate "
                                    "for it")
        if not signature_verifies(key, challenge.challenge.encode("utf-8"), signature):
            return ChallengeRefused("bad_signature", f"the challenge response does not verify with node "
                                    f"{node_id}'s certificate")
        return None

    def _settle(self, tx: StorageTx, user_id: str, request_id: str, node_id: str,
                refusal: Optional[ChallengeRefused]) -> MappingChallenge:
        """Inside the write transaction: settle the challenge if it is still open (another process may
        have settled it since it was read), then map the node if the signature verified."""
        now = self._clock()
        challenge = tx.challenge(request_id)
        self._check_open(challenge, user_id, request_id, now)  # raising here writes nothing
        status = CONFIRMED if refusal is None else DISCARDED
        tx.settle_challenge(request_id, status, node_id, now)
        if refusal is None:
            # Other users keep their association: the node reports its factory reset, which drops them
            # (docs/protocol.md 5.3), as upstream nodes in challenge-response mode do.
            tx.add_user_node(user_id, node_id, now)
        return replace(challenge, status=status, node_id=node_id, updated=now)
