"""User-node mapping decisions: client requests meet node reports (docs/protocol.md 6 "Cloud semantics", docs/protocol.md 5.3).

A request is `confirmed` when the client's (node_id, user_id from the token, secret_key) equals a node's
mapping publish, whichever came first, with no more than `timeout_s` between the two; it becomes
`timedout` (evaluated lazily when read or when a late publish arrives, and persisted) otherwise.
Every decision is taken inside one storage transaction, so several cloud processes sharing the
database cannot both miss a match.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Callable, Optional

from rmkit.cloud.group_commit import GroupCommitter
from rmkit.cloud.storage import MappingRequest, Storage, StorageTx, now as wall_now

log = logging.getLogger("rmkit.cloud.mapping")

# docs/protocol.md 5.3: the dummy mapping a node publishes on factory reset
RESET_USER_ID = "esp-rmaker"
MAX_ID_LEN = 128
# use fullmatch(): `$` would also match before a final newline ("N1\n")
NODE_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")  # must also be a single MQTT topic level
REQUESTED, CONFIRMED, TIMEDOUT = "requested", "confirmed", "timedout"
# node reports are kept this long (at least the matching window) to drop QoS1 duplicates
MIN_REPORT_RETENTION_S = 3600.0
# GET v1/user/nodes pages: RainMaker's num_records default, and our ceiling on one answer
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100


class NodeReportRejected(ValueError):
    """A node's mapping publish that was dropped; the message says why (never the secret)."""


@dataclass(frozen=True)
class ReportOutcome:
    node_id: str
    duplicate: bool
    removed_users: list
    confirmed_requests: list
    timedout_requests: list
    user_id: str = ""
    reset: bool = False


@dataclass(frozen=True)
class NodePage:
    """One page of a user's node ids, in id order. `next_id` is the first id of the next page (None on
    the last one): the client hands it back as start_id (docs/protocol.md 6)."""
    nodes: list[str]
    total: int
    next_id: Optional[str]


def parse_node_report(topic_node_id: str, payload: bytes) -> tuple[str, str, str, bool]:
    """(node_id, user_id, secret_key, reset) from a mapping publish, or NodeReportRejected."""
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # "[[[[..." nests past the recursion limit
        raise NodeReportRejected("payload is not JSON") from exc
    if not isinstance(doc, dict):
        raise NodeReportRejected("payload is not a JSON object")
    for field in ("node_id", "user_id", "secret_key"):
        if field not in doc:
            raise NodeReportRejected(f"payload lacks {field}")
        if not isinstance(doc[field], str):
            raise NodeReportRejected(f"{field} is {type(doc[field]).__name__}, not a string")
        if len(doc[field]) > MAX_ID_LEN:
            raise NodeReportRejected(f"{field} is longer than {MAX_ID_LEN} characters")
    reset = doc.get("reset", False)
    if not isinstance(reset, bool):
        raise NodeReportRejected(f"reset is {type(reset).__name__}, not a boolean")
    node_id, user_id, secret_key = doc["node_id"], doc["user_id"], doc["secret_key"]
    if node_id != topic_node_id:
        raise NodeReportRejected(f"node_id {node_id!r} differs from the topic's {topic_node_id!r}")
    if not NODE_ID_RE.fullmatch(node_id):
        raise NodeReportRejected(f"node_id {node_id!r} is not a valid node id")
    if not user_id:
        raise NodeReportRejected("user_id is empty")
    for field, value in (("user_id", user_id), ("secret_key", secret_key)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800") that no UTF-8 store can hold
            raise NodeReportRejected(f"{field} is not valid Unicode text") from None
    return node_id, user_id, secret_key, reset


class MappingService:
    """Takes client mapping requests and node reports, decides request_status, keeps user_nodes."""

    def __init__(self, storage: Storage, timeout_s: float = 60.0, clock: Callable[[], float] = wall_now):
        self.storage = storage
        self.timeout_s = float(timeout_s)
        self._clock = clock
        # the hot writes (client PUTs, node reports) share commits when they come together
        self._writes = GroupCommitter(storage)

    # ------------------------------------------------------------------------------ client side

    def request_add(self, user_id: str, node_id: str, secret_key: str) -> MappingRequest:
        """Record a client's PUT (operation add); confirmed at once if the node already reported."""
        now = self._clock()
        req = MappingRequest(_new_request_id(), user_id, node_id, secret_key, "add", REQUESTED, now, now)

        def record(tx: StorageTx) -> MappingRequest:
            tx.add_mapping_request(req)
            matched = False
            for report in tx.node_reports_since(node_id, now - self.timeout_s):  # oldest first
                if report.user_id == RESET_USER_ID:
                    matched = False  # a factory reset after the node's publish voids it
                elif report.user_id == user_id and report.secret_key == secret_key:
                    matched = True
            return self._confirm(tx, req, now) if matched else req

        req = self._writes.run(record)
        self._log_state(req, "client request")
        return req

    def request_remove(self, user_id: str, node_id: str) -> Optional[MappingRequest]:
        """Remove the user's association with the node at once; None if there was none."""
        now = self._clock()
        with self.storage.transaction() as tx:
            if not tx.remove_user_node(user_id, node_id):
                return None
            req = MappingRequest(_new_request_id(), user_id, node_id, "", "remove", CONFIRMED, now, now)
            tx.add_mapping_request(req)
        log.info("mapping %s: node %s removed from user %s", req.request_id, node_id, user_id)
        return req

    def request_status(self, user_id: str, request_id: str) -> Optional[MappingRequest]:
        """The user's request (timing it out if its window passed), or None if unknown or someone else's."""
        with self.storage.read() as tx:  # a poll is a read: it must not queue behind writers
            req = tx.mapping_request(request_id)
        if req is None or req.user_id != user_id:
            return None
        if req.status != REQUESTED or self._clock() <= req.created + self.timeout_s:
            return req
        with self.storage.transaction() as tx:  # its window has passed: time it out, unless a report just came
            req = tx.mapping_request(request_id)
            if req.status == REQUESTED:
                req = self._time_out(tx, req)
                timed_out = True
            else:
                timed_out = False
        if timed_out:
            self._log_state(req, "no matching node report in time")
        return req

    def user_nodes(self, user_id: str, start_id: Optional[str] = None,
                   limit: int = DEFAULT_PAGE_SIZE) -> NodePage:
        """The user's node ids from start_id (inclusive) on, at most `limit` of them."""
        with self.storage.read() as tx:  # one snapshot: `total` counts the nodes the page was cut from
            ids = tx.user_nodes_page(user_id, start_id, limit + 1)  # the extra one is the next page's first
            total = tx.count_user_nodes(user_id)
        return NodePage(ids[:limit], total, ids[limit] if len(ids) > limit else None)

    # -------------------------------------------------------------------------------- node side

    def node_reported(self, node_id: str, user_id: str, secret_key: str, reset: bool) -> ReportOutcome:
        """Apply a node's (already validated) mapping publish."""
        return self.node_reports([(node_id, user_id, secret_key, reset)])[0]

    def node_reports(self, reports: list[tuple[str, str, str, bool]]) -> list[ReportOutcome]:
        """Apply validated mapping publishes in order, all in one transaction (one commit, one fsync)."""
        now = self._clock()

        def apply(tx: StorageTx) -> list[ReportOutcome]:
            outcomes = [self._apply_report(tx, now, *report) for report in reports]
            tx.prune_node_reports(now - max(MIN_REPORT_RETENTION_S, 2 * self.timeout_s))
            return outcomes

        outcomes = self._writes.run(apply)
        for outcome in outcomes:  # logged once committed: a rolled-back batch must not look applied
            self._log_outcome(outcome)
        return outcomes

    def _apply_report(self, tx: StorageTx, now: float, node_id: str, user_id: str, secret_key: str,
                      reset: bool) -> ReportOutcome:
        dummy = user_id == RESET_USER_ID
        confirmed, timedout, removed = [], [], []
        # A QoS1 redelivery or a re-publish of the same provisioning run (same user and secret_key,
        # with or without `reset`) must not run `reset` again: that would drop the association its
        # first copy just confirmed.
        if not dummy and tx.has_node_report(node_id, user_id, secret_key):
            return ReportOutcome(node_id, True, [], [], [])
        if reset or dummy:
            removed = tx.remove_node_users(node_id)
        tx.add_node_report(node_id, user_id, secret_key, reset, now)
        if not dummy:
            for req in tx.requested_mappings_for_node(node_id):
                if now > req.created + self.timeout_s:
                    timedout.append(self._time_out(tx, req))
                elif req.user_id == user_id and req.secret_key == secret_key and req.operation == "add":
                    confirmed.append(self._confirm(tx, req, now))
        return ReportOutcome(node_id, False, removed, confirmed, timedout, user_id, reset)

    def _log_outcome(self, outcome: ReportOutcome) -> None:
        if outcome.duplicate:
            return
        log.info("node %s reported a mapping for user %s%s", outcome.node_id, outcome.user_id,
                 " (reset)" if outcome.reset else "")
        if outcome.removed_users:
            log.info("node %s reset: associations of %d user(s) removed (%s)", outcome.node_id,
                     len(outcome.removed_users), ", ".join(outcome.removed_users))
        for req in outcome.timedout_requests:
            self._log_state(req, "node report came after the timeout")
        for req in outcome.confirmed_requests:
            self._log_state(req, "node report")

    def ingest(self, topic_node_id: str, payload: bytes) -> Optional[ReportOutcome]:
        """Validate and apply a raw publish; a bad one is logged and dropped (returns None)."""
        return self.ingest_batch([(topic_node_id, payload)])[0]

    def ingest_batch(self, publishes: list[tuple[str, bytes]]) -> list[Optional[ReportOutcome]]:
        """ingest() for several publishes, in order, in one transaction: the outcome of each (None for
        a dropped one). A storage error applies none of them."""
        fields: list[Optional[tuple]] = []
        for topic_node_id, payload in publishes:
            try:
                fields.append(parse_node_report(topic_node_id, payload))
            except NodeReportRejected as exc:
                log.warning("dropped mapping publish for node %r: %s", topic_node_id, exc)
                fields.append(None)
        valid = [f for f in fields if f is not None]
        applied = iter(self.node_reports(valid) if valid else [])
        outcomes = [None if f is None else next(applied) for f in fields]
        for outcome in outcomes:
            if outcome is not None and outcome.duplicate:
                log.info("node %s: repeated mapping publish ignored", outcome.node_id)
        return outcomes

    # --------------------------------------------------------------------------------- helpers

    def _confirm(self, tx: StorageTx, req: MappingRequest, now: float) -> MappingRequest:
        tx.set_request_status(req.request_id, CONFIRMED, now)
        tx.add_user_node(req.user_id, req.node_id, now)
        return _with_status(req, CONFIRMED, now)

    def _time_out(self, tx: StorageTx, req: MappingRequest) -> MappingRequest:
        now = self._clock()
        tx.set_request_status(req.request_id, TIMEDOUT, now)
        return _with_status(req, TIMEDOUT, now)

    @staticmethod
    def _log_state(req: MappingRequest, cause: str) -> None:
        log.info("mapping %s: node %s user %s -> %s (%s)", req.request_id, req.node_id, req.user_id,
                 req.status, cause)


def _with_status(req: MappingRequest, status: str, now: float) -> MappingRequest:
    return MappingRequest(req.request_id, req.user_id, req.node_id, req.secret_key, req.operation,
                          status, req.created, now)


def _new_request_id() -> str:
    return secrets.token_hex(16)
