"""The API's error shape: every failure is `{"status":"failure","error_code":N,"description":"..."}`.

esp-rainmaker-cli calls `response.json()` on every error (docs/protocol.md 6), so even Flask's own
404/405/413 and an unexpected exception answer in this shape, never as HTML.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("rmkit.cloud.api")

# error_code values; 101009 is the one RainMaker uses for a failed login (the CLI prints it)
E_BAD_JSON = 100001
E_MISSING_FIELD = 100002
E_BAD_FIELD = 100003
E_BAD_OPERATION = 100004
E_USER_MISMATCH = 100005
E_NOT_FOUND = 100404
E_METHOD = 100405
E_TOO_LARGE = 100413
E_INTERNAL = 100500
E_LOGIN = 101009
E_TOO_MANY_LOGINS = 101429
E_NO_TOKEN = 101010
E_BAD_TOKEN = 101011
E_EXPIRED_TOKEN = 101012
E_REQUEST_NOT_FOUND = 102001
E_NODE_NOT_MAPPED = 102002
# challenge-response mapping (docs/protocol.md 7.1)
E_CHALLENGE_USED = 102003
E_CHALLENGE_EXPIRED = 102004
E_NODE_UNKNOWN = 102005
E_NODE_KEY_UNSUPPORTED = 102006
E_BAD_CHALLENGE_RESPONSE = 102007
E_TOO_MANY_CHALLENGES = 102429


class ApiError(Exception):
    """Raised anywhere in a request; answered as the error shape with `http_status` (and a
    Retry-After header when `retry_after_s` is set)."""

    def __init__(self, http_status: int, error_code: int, description: str, retry_after_s: int = 0):
        super().__init__(description)
        self.http_status = http_status
        self.error_code = error_code
        self.description = description
        self.retry_after_s = retry_after_s


def json_response(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def success(**fields: Any) -> Response:
    return json_response({"status": "success", **fields})


def _failure(error_code: int, description: str, status: int) -> Response:
    return json_response({"status": "failure", "error_code": error_code, "description": description}, status)


def install_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        response = _failure(exc.error_code, exc.description, exc.http_status)
        if exc.retry_after_s:
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        codes = {404: E_NOT_FOUND, 405: E_METHOD, 413: E_TOO_LARGE}
        return _failure(codes.get(exc.code, 100000 + (exc.code or 0)), exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def _internal(exc: Exception):
        log.exception("internal error on %s %s", request.method, request.path)
        return _failure(E_INTERNAL, "internal error", 500)
