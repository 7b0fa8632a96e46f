"""The client's side of steps 2 and 4 of the seed: log in, ask the cloud to map a node, poll the request.

Speaks RainMaker's REST API (docs/protocol.md 6) to any base URL: our local cloud or
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
            raise CloudError(f"{method} {path}: HTTP {err.code}: {_description(err.read())}") from None
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


def _description(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        return f"{body.get('description', body)} (error {body.get('error_code', '?')})"
    except ValueError:
        return raw.decode(errors="replace")[:200]
