"""The client's side of steps 2 and 4 of the secret-key flow (README, "How the mapping flow works"), and challenge-response's cloud calls: log in, ask the cloud to map a node, poll the request;
and the cloud's half of challenge-response mapping: get a challenge, hand over the node's signature.

Speaks RainMaker's REST API (docs/protocol.md 6, 7.1) to any base URL: our local cloud or
another compatible service. Polls every `poll_interval_s` (0.2 s by default, not the CLI's 5 s),
so a virtual-board run confirms in about a second.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

FINAL_STATUSES = ("confirmed", "timedout", "discarded")


class CloudError(Exception):
    """The cloud refused a call or could not be reached; the message says which and why."""


class CloudRefused(CloudError):
    """The cloud answered a call with an HTTP error; `description` and `error_code` are from its error body."""

    def __init__(self, message: str, http_status: int, description: str, error_code: Optional[int]):
        super().__init__(message)
        self.http_status = http_status
        self.description = description
        self.error_code = error_code


@dataclass(frozen=True)
class MappingChallenge:
    """What POST user/nodes/mapping/initiate answers (docs/protocol.md 7.1)."""
    request_id: str
    challenge: str


@dataclass
class MappingOutcome:
    request_id: str
    status: str            # confirmed | timedout | discarded | requested (gave up waiting)
    polls: int
    elapsed_s: float


class CloudClient:
    def __init__(self, base_url: str, timeout_s: float = 10.0):
        base = base_url.rstrip("/")
        self.api = base if base.endswith("/v1") else base + "/v1"
        self.timeout_s = timeout_s
        self.access_token: Optional[str] = None

    # -- HTTP ---------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, auth: bool = True) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            if not self.access_token:
                raise CloudError("not logged in")
            request.add_header("Authorization", self.access_token)  # raw token, no "Bearer" (CLI docs/protocol.md 1)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as err:
            description, error_code = _error_body(err.read())
            code_text = f" (error {error_code})" if error_code is not None else ""
            raise CloudRefused(f"{method} {path}: HTTP {err.code}: {description}{code_text}", err.code,
                               description, error_code) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise CloudError(f"cannot reach the cloud at {self.api}: {reason}") from None
        try:
            return json.loads(text)
        except ValueError:
            raise CloudError(f"{method} {path}: the cloud answered with something that is not JSON") from None

    # -- API ----------------------------------------------------------------------------------

    def login(self, email: str, password: str) -> str:
        """Password login; returns the user id carried by the id token."""
        reply = self._call("POST", "/login2", {"user_name": email, "password": password}, auth=False)
        if reply.get("status") != "success" or "accesstoken" not in reply:
            raise CloudError(f"login refused: {reply.get('description', reply)}")
        self.access_token = reply["accesstoken"]
        return self.user_id_of(reply["idtoken"])

    @staticmethod
    def user_id_of(id_token: str) -> str:
        import base64
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return claims["custom:user_id"]

    def request_mapping(self, node_id: str, secret_key: str, operation: str = "add") -> str:
        reply = self._call("PUT", "/user/nodes/mapping",
                           {"node_id": node_id, "secret_key": secret_key, "operation": operation})
        if "request_id" not in reply:
            raise CloudError(f"mapping request accepted without a request_id: {reply}")
        return reply["request_id"]

    def initiate_mapping(self, timeout_s: int = 360) -> MappingChallenge:
        """A challenge for challenge-response mapping, open `timeout_s` (esp-rainmaker-cli asks for 360)."""
        try:
            reply = self._call("POST", "/user/nodes/mapping/initiate", {"timeout": timeout_s})
        except CloudRefused as exc:
            raise CloudRefused(f"the cloud refused to issue a mapping challenge: {exc.description}"
                               + _code_text(exc), exc.http_status, exc.description, exc.error_code) from None
        request_id, challenge = reply.get("request_id"), reply.get("challenge")
        if not isinstance(request_id, str) or not request_id or not isinstance(challenge, str) or not challenge:
            raise CloudError("the cloud's mapping challenge lacks a request_id or a challenge")
        return MappingChallenge(request_id, challenge)

    def verify_mapping(self, request_id: str, node_id: str, signature: bytes) -> None:
        """Hand the node's signature of the challenge to the cloud, as lower-case hex like esp-rainmaker-cli;
        returns once the cloud has mapped the node, CloudRefused if it did not."""
        body = {"request_id": request_id, "node_id": node_id, "challenge_response": signature.hex()}
        try:
            reply = self._call("POST", "/user/nodes/mapping/verify", body)
        except CloudRefused as exc:
            raise CloudRefused(f"the cloud refused the node's challenge response: {exc.description}"
                               + _code_text(exc), exc.http_status, exc.description, exc.error_code) from None
        if reply.get("status") != "success":  # as the TS SDK insists
            raise CloudError(f"the cloud answered the challenge response without success: {reply}")

    def mapping_status(self, request_id: str) -> str:
        return self._call("GET", f"/user/nodes/mapping?request_id={request_id}").get("request_status", "")

    def wait_for_mapping(self, request_id: str, poll_interval_s: float = 0.2, give_up_s: float = 90.0,
                         on_status: Optional[Callable[[str], None]] = None) -> MappingOutcome:
        """Poll until the request is final (the cloud times it out after 60 s by itself)."""
        started = time.monotonic()
        polls, last = 0, None
        while True:
            status = self.mapping_status(request_id)
            polls += 1
            if status != last and on_status:
                on_status(status)
            last = status
            elapsed = time.monotonic() - started
            if status in FINAL_STATUSES or elapsed > give_up_s:
                return MappingOutcome(request_id, status, polls, elapsed)
            time.sleep(poll_interval_s)

    def nodes(self) -> list[str]:
        found, query = [], ""
        while True:
            reply = self._call("GET", "/user/nodes" + query)
            found += reply.get("nodes", [])
            if not reply.get("next_id"):
                return found
            query = "?start_id=" + reply["next_id"]


def _error_body(raw: bytes) -> tuple[str, Optional[int]]:
    """(description, error_code) from an error body in RainMaker's shape, else its first 200 characters."""
    try:
        body = json.loads(raw)
    except ValueError:
        return " ".join(raw.decode(errors="replace")[:200].split()), None
    if not isinstance(body, dict):
        return str(body)[:200], None
    code = body.get("error_code")
    return str(body.get("description", body)), code if isinstance(code, int) else None


def _code_text(exc: CloudRefused) -> str:
    return f" (error {exc.error_code})" if exc.error_code is not None else f" (HTTP {exc.http_status})"
