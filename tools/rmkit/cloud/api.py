"""The RainMaker-compatible REST API (docs/protocol.md 6) as a Flask app.

Errors are JSON `{"status":"failure","error_code":N,"description":"..."}` with a fitting HTTP status;
esp-rainmaker-cli calls `response.json()` on every error. The user of a request is always the one in
the access token. The CLI also sends `user_id` in the PUT mapping body: it is checked and a mismatch
is refused (400), so a client can never ask for a mapping on someone else's behalf.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Optional

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from rmkit.cloud.accounts import MAX_PASSWORD_LEN, AccountError, Accounts
from rmkit.cloud.mapping import MAX_ID_LEN, NODE_ID_RE, MappingService
from rmkit.cloud.tokens import AccessClaims, TokenError

log = logging.getLogger("rmkit.cloud.api")

MAX_BODY_BYTES = 16 * 1024
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100

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


class ApiError(Exception):
    def __init__(self, http_status: int, error_code: int, description: str, retry_after_s: int = 0):
        super().__init__(description)
        self.http_status = http_status
        self.error_code = error_code
        self.description = description
        self.retry_after_s = retry_after_s


def _json(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _success(**fields: Any) -> Response:
    return _json({"status": "success", **fields})


# ------------------------------------------------------------------------------- input validation

# Every value a request carries is checked here, before anything reaches accounts, mapping or storage.
MAX_JSON_DEPTH = 8  # the deepest body the API takes is {"metadata": {...}}; 8 leaves room, 1000 would not


def _body() -> dict:
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, E_TOO_LARGE, f"request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except RecursionError:  # CPython's parser gives up near 1,000 levels
        raise ApiError(400, E_BAD_JSON, f"request body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, E_BAD_JSON, "request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ApiError(400, E_BAD_JSON, "request body must be a JSON object")
    if _depth(doc) > MAX_JSON_DEPTH:
        raise ApiError(400, E_BAD_JSON, f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
    return doc


def _depth(doc: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, todo = 0, [(doc, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            todo.extend((item, depth + 1) for item in value)
    return deepest


def _text(value: str, what: str) -> str:
    """JSON may carry lone surrogates ("\\ud800") that no UTF-8 store can hold: refuse them here."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, E_BAD_FIELD, f"{what} is not valid Unicode text") from None
    return value


def _string(doc: dict, field: str, max_len: int = MAX_ID_LEN, required: bool = True,
            allow_empty: bool = False) -> Optional[str]:
    if field not in doc:
        if required:
            raise ApiError(400, E_MISSING_FIELD, f"missing field: {field}")
        return None
    value = doc[field]
    if not isinstance(value, str):
        raise ApiError(400, E_BAD_FIELD, f"{field} must be a string, not {type(value).__name__}")
    if len(value) > max_len:
        raise ApiError(400, E_BAD_FIELD, f"{field} is longer than {max_len} characters")
    if not value and not allow_empty:
        raise ApiError(400, E_BAD_FIELD, f"{field} must not be empty")
    return _text(value, field)


def _node_id(doc: dict) -> str:
    node_id = _string(doc, "node_id")
    if not NODE_ID_RE.fullmatch(node_id):
        raise ApiError(400, E_BAD_FIELD, "node_id may only hold letters, digits and _.:-")
    return node_id


def _query_string(name: str, max_len: int = MAX_ID_LEN, required: bool = False) -> Optional[str]:
    value = request.args.get(name)
    if value is None:
        if required:
            raise ApiError(400, E_MISSING_FIELD, f"missing query parameter: {name}")
        return None
    if not value or len(value) > max_len:
        raise ApiError(400, E_BAD_FIELD, f"query parameter {name} must be 1 to {max_len} characters")
    return _text(value, f"query parameter {name}")


def _page_size() -> int:
    text = request.args.get("num_records", str(DEFAULT_PAGE_SIZE))
    # isdigit() alone takes "²" and 5,000-digit numbers, which int() refuses or chokes on
    if not (text.isascii() and text.isdigit() and len(text) <= 3 and 1 <= int(text) <= MAX_PAGE_SIZE):
        raise ApiError(400, E_BAD_FIELD, f"num_records must be 1 to {MAX_PAGE_SIZE}")
    return int(text)


def _access_token() -> str:
    token = request.headers.get("Authorization", "").strip()
    if not token:
        raise ApiError(401, E_NO_TOKEN, "missing Authorization header (access token)")
    if not token.isascii() or len(token) > 4096:  # tokens are ASCII; compare_digest refuses the rest
        raise ApiError(401, E_BAD_TOKEN, "Unauthorized: the Authorization header is not a token")
    return token


def _tags_and_metadata(doc: dict) -> None:
    """Optional `tags` (list of "k:v" strings) and `metadata` (object): checked, not stored."""
    tags = doc.get("tags")
    if tags is not None and (not isinstance(tags, list) or len(tags) > 32
                             or not all(isinstance(t, str) and len(t) <= MAX_ID_LEN for t in tags)):
        raise ApiError(400, E_BAD_FIELD, "tags must be a list of at most 32 strings")
    for tag in tags or ():
        _text(tag, "tags")
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ApiError(400, E_BAD_FIELD, "metadata must be a JSON object")


# ------------------------------------------------------------------------------------------- app

def create_app(accounts: Accounts, mapping: MappingService) -> Flask:
    app = Flask("rmkit.cloud")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    def authenticated() -> AccessClaims:
        token = _access_token()
        try:
            claims = accounts.authenticate(token)
        except TokenError as exc:
            code = E_EXPIRED_TOKEN if exc.reason == "expired" else E_BAD_TOKEN
            raise ApiError(401, code, f"Unauthorized: {exc}") from None
        g.user_id = claims.user_id
        return claims

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

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        response = _json({"status": "failure", "error_code": exc.error_code, "description": exc.description},
                         exc.http_status)
        if exc.retry_after_s:
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        codes = {404: E_NOT_FOUND, 405: E_METHOD, 413: E_TOO_LARGE}
        return _json({"status": "failure", "error_code": codes.get(exc.code, 100000 + (exc.code or 0)),
                      "description": exc.description or exc.name}, exc.code or 500)

    @app.errorhandler(Exception)
    def _internal(exc: Exception):
        log.exception("internal error on %s %s", request.method, request.path)
        return _json({"status": "failure", "error_code": E_INTERNAL, "description": "internal error"}, 500)

    # --- no auth ------------------------------------------------------------------------------

    @app.get("/apiversions")
    def apiversions():
        # docs/protocol.md 6: asked before a token refresh
        return _json({"supported_versions": ["v1"]})

    @app.post("/v1/login2")
    def login2():
        doc = _body()
        if "refreshtoken" in doc:
            refresh_token = _string(doc, "refreshtoken", max_len=256)
            try:
                tokens = accounts.refresh(refresh_token)
            except AccountError as exc:
                raise ApiError(401, E_BAD_TOKEN, str(exc)) from None
            return _success(description="Token refreshed", idtoken=tokens.idtoken,
                            accesstoken=tokens.accesstoken)
        user_name = _string(doc, "user_name", max_len=254)
        password = _string(doc, "password", max_len=MAX_PASSWORD_LEN)
        try:
            tokens = accounts.login(user_name, password, request.remote_addr or "-")
        except AccountError as exc:
            if exc.kind == "throttled":
                raise ApiError(429, E_TOO_MANY_LOGINS, str(exc), retry_after_s=exc.retry_after_s) from None
            raise ApiError(401, E_LOGIN, str(exc)) from None
        g.user_id = "(login)"
        # no "session" key: its presence switches the CLI to OTP login (docs/protocol.md 6)
        return _success(description="Login successful", idtoken=tokens.idtoken,
                        accesstoken=tokens.accesstoken, refreshtoken=tokens.refreshtoken)

    # --- authenticated ------------------------------------------------------------------------

    @app.post("/v1/logout2")
    def logout2():
        claims = authenticated()
        everywhere = request.args.get("logout_all", "false").lower()
        if everywhere not in ("true", "false"):
            raise ApiError(400, E_BAD_FIELD, "logout_all must be true or false")
        accounts.logout(claims, everywhere == "true")  # the CLI sends no body
        return _success(description="Logged out")

    @app.get("/v1/user")
    def user():
        claims = authenticated()
        record = accounts.user(claims.user_id)
        if record is None:
            raise ApiError(404, E_NOT_FOUND, "user not found")
        return _json({"user_id": record.user_id, "user_name": record.email, "super_admin": False,
                      "picture_url": "", "name": ""})

    @app.get("/v1/user/nodes")
    def user_nodes():
        claims = authenticated()
        start_id = _query_string("start_id")
        limit = _page_size()
        with mapping.storage.transaction() as tx:
            page = tx.user_nodes_page(claims.user_id, start_id, limit + 1)
            total = tx.count_user_nodes(claims.user_id)
        body = {"nodes": page[:limit], "total": total}
        if len(page) > limit:
            body["next_id"] = page[limit]  # docs/protocol.md 6: next page starts at this id
        return _json(body)

    @app.put("/v1/user/nodes/mapping")
    def put_mapping():
        claims = authenticated()
        doc = _body()
        operation = _string(doc, "operation", max_len=16)
        if operation not in ("add", "remove"):
            raise ApiError(400, E_BAD_OPERATION, f"unknown operation {operation!r} (add or remove)")
        node_id = _node_id(doc)
        # removenode sends secret_key "" (docs/protocol.md 6); add needs a real one
        secret_key = _string(doc, "secret_key", required=(operation == "add"), allow_empty=(operation == "remove"))
        body_user = _string(doc, "user_id", required=False)
        if body_user is not None and body_user != claims.user_id:
            raise ApiError(400, E_USER_MISMATCH, "user_id in the body is not the token's user")
        _tags_and_metadata(doc)
        if operation == "add":
            req = mapping.request_add(claims.user_id, node_id, secret_key)
        else:
            req = mapping.request_remove(claims.user_id, node_id)
            if req is None:
                raise ApiError(404, E_NODE_NOT_MAPPED, f"node {node_id} is not associated with this user")
        return _success(request_id=req.request_id, description="Mapping request recorded")

    @app.get("/v1/user/nodes/mapping")
    def get_mapping():
        # the CLI sends `?&request_id=`; Werkzeug skips the empty pair, so request.args sees request_id
        claims = authenticated()
        request_id = _query_string("request_id", required=True)
        req = mapping.request_status(claims.user_id, request_id)
        if req is None:  # unknown and another user's request look the same
            raise ApiError(404, E_REQUEST_NOT_FOUND, "mapping request not found")
        return _json({"request_id": req.request_id, "request_status": req.status,
                      "node_id": req.node_id, "operation": req.operation})

    return app
