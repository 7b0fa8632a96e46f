"""The RainMaker-compatible REST API (docs/protocol.md 6) as a Flask app: `create_app(accounts, mapping[, challenges])`.

One module a job:
- errors    the failure shape `{"status":"failure","error_code":N,"description":"..."}` and the codes;
            esp-rainmaker-cli calls `response.json()` on every error, so every error is JSON
- inputs    every check of a request value (body, fields, query, Authorization header)
- auth      `@requires_user`: the token's user is the user of a request, for every view that needs one
- backends  how views reach the accounts and mapping services
- versions, users, nodes, challenges   the blueprints: GET /apiversions; login2, logout2, user; the
            user's nodes and mapping requests; challenge-response mapping (initiate, verify)

The CLI also sends `user_id` in the PUT mapping body: it is checked against the token's and a
mismatch is refused (400), so a client can never ask for a mapping on someone else's behalf.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from flask import Flask, Response, g, request

from rmkit.cloud.accounts import Accounts
from rmkit.cloud.api.backends import Backends, attach
from rmkit.cloud.api.challenges import challenges as challenges_blueprint
from rmkit.cloud.api.errors import install_error_handlers
from rmkit.cloud.api.inputs import MAX_BODY_BYTES
from rmkit.cloud.api.nodes import nodes
from rmkit.cloud.api.users import users
from rmkit.cloud.api.versions import versions
from rmkit.cloud.challenge_mapping import ChallengeService
from rmkit.cloud.mapping import MappingService

log = logging.getLogger("rmkit.cloud.api")

__all__ = ["create_app"]


def create_app(accounts: Accounts, mapping: MappingService, challenges: Optional[ChallengeService] = None) -> Flask:
    """The app over these services; without `challenges`, challenge-response mapping runs on the same
    storage with no node registry (every verify answers "node unknown")."""
    app = Flask("rmkit.cloud")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    attach(app, Backends(accounts, mapping, challenges or ChallengeService(mapping.storage)))
    install_error_handlers(app)
    _install_request_log(app)
    for blueprint in (versions, users, nodes, challenges_blueprint):
        app.register_blueprint(blueprint)
    return app


def _install_request_log(app: Flask) -> None:
    """One line per request: method, path, status, user (set by @requires_user or login2), time."""

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()
        g.user_id = "-"

    @app.after_request
    def _log_request(response: Response) -> Response:
        elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        # path only: the query holds at most request ids / paging ids, never secrets; no headers or bodies
        log.info("%s %s -> %d user=%s %.1f ms", request.method, request.path, response.status_code,
                 g.get("user_id", "-"), elapsed_ms)
        return response
