"""Every value a request carries is checked here, before anything reaches accounts, mapping or storage.

Views call these and pass on only what they return; a bad value is an ApiError (a 4xx in the API's
error shape), so nothing else in the cloud needs to distrust its arguments.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from flask import request

from rmkit.cloud.accounts import MAX_EMAIL_LEN, MAX_PASSWORD_LEN
from rmkit.cloud.api.errors import (E_BAD_FIELD, E_BAD_JSON, E_BAD_OPERATION, E_BAD_TOKEN, E_MISSING_FIELD,
                                    E_NO_TOKEN, E_TOO_LARGE, E_USER_MISMATCH, ApiError)
from rmkit.cloud.challenge_mapping import DEFAULT_TIMEOUT_S, MAX_REQUESTED_TIMEOUT_S
from rmkit.cloud.mapping import DEFAULT_PAGE_SIZE, MAX_ID_LEN, MAX_PAGE_SIZE, NODE_ID_RE
from rmkit.cloud.node_signature import MAX_SIGNATURE_BYTES

MAX_BODY_BYTES = 16 * 1024
MAX_JSON_DEPTH = 8  # the deepest body the API takes is {"metadata": {...}}; 8 leaves room, 1000 would not
MAX_TOKEN_LEN = 4096
MAX_REFRESH_TOKEN_LEN = 256
MAX_TAGS = 32
_HEX_RE = re.compile(r"[0-9a-fA-F]+")  # fullmatch; bytes.fromhex alone would also take spaces


# ------------------------------------------------------------------------------------------ body

def json_body(empty_is_object: bool = False) -> dict:
    """The request's JSON object; with empty_is_object, no body at all counts as {}."""
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, E_TOO_LARGE, f"request body is larger than {MAX_BODY_BYTES} bytes")
    if empty_is_object and not raw.strip():
        return {}
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


def string_field(doc: dict, field: str, max_len: int = MAX_ID_LEN, required: bool = True,
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


def _node_id_field(doc: dict) -> str:
    node_id = string_field(doc, "node_id")
    if not NODE_ID_RE.fullmatch(node_id):
        raise ApiError(400, E_BAD_FIELD, "node_id may only hold letters, digits and _.:-")
    return node_id


def _check_tags_and_metadata(doc: dict) -> None:
    """Optional `tags` (list of "k:v" strings) and `metadata` (object): checked, not stored."""
    tags = doc.get("tags")
    if tags is not None and (not isinstance(tags, list) or len(tags) > MAX_TAGS
                             or not all(isinstance(t, str) and len(t) <= MAX_ID_LEN for t in tags)):
        raise ApiError(400, E_BAD_FIELD, f"tags must be a list of at most {MAX_TAGS} strings")
    for tag in tags or ():
        _text(tag, "tags")
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ApiError(400, E_BAD_FIELD, "metadata must be a JSON object")


# ------------------------------------------------------------------------------ whole requests

@dataclass(frozen=True)
class LoginRequest:
    """login2 is two calls in one: a refresh when the body has `refreshtoken`, else a password login."""
    refresh_token: Optional[str]
    user_name: str = ""
    password: str = ""


def login_request(doc: dict) -> LoginRequest:
    if "refreshtoken" in doc:
        return LoginRequest(string_field(doc, "refreshtoken", max_len=MAX_REFRESH_TOKEN_LEN))
    return LoginRequest(None, string_field(doc, "user_name", max_len=MAX_EMAIL_LEN),
                        string_field(doc, "password", max_len=MAX_PASSWORD_LEN))


@dataclass(frozen=True)
class MappingChange:
    operation: str  # "add" or "remove"
    node_id: str
    secret_key: Optional[str]  # "" or absent on remove


def mapping_change(doc: dict, user_id: str) -> MappingChange:
    """A PUT mapping body, for the token's `user_id`. The checks run in the order the body's fields
    are documented, so the same bad body always gets the same error."""
    operation = string_field(doc, "operation", max_len=16)
    if operation not in ("add", "remove"):
        raise ApiError(400, E_BAD_OPERATION, f"unknown operation {operation!r} (add or remove)")
    node_id = _node_id_field(doc)
    # removenode sends secret_key "" (docs/protocol.md 6); add needs a real one
    secret_key = string_field(doc, "secret_key", required=(operation == "add"), allow_empty=(operation == "remove"))
    # the CLI sends its user_id too: a client may never ask for a mapping on someone else's behalf
    body_user = string_field(doc, "user_id", required=False)
    if body_user is not None and body_user != user_id:
        raise ApiError(400, E_USER_MISMATCH, "user_id in the body is not the token's user")
    _check_tags_and_metadata(doc)
    return MappingChange(operation, node_id, secret_key)


def challenge_timeout(doc: dict) -> int:
    """The `timeout` of a mapping initiate body, in seconds: esp-rainmaker-cli sends 360, the TS SDK none
    (DEFAULT_TIMEOUT_S). A whole number 1..MAX_REQUESTED_TIMEOUT_S; the service cuts long ones down.
    The TS SDK may also send `group_id`: checked, not used (this cloud has no groups)."""
    timeout = doc.get("timeout", DEFAULT_TIMEOUT_S)
    # bool is an int to Python, and 360.0 or "360" are not what any client sends
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= MAX_REQUESTED_TIMEOUT_S:
        raise ApiError(400, E_BAD_FIELD, f"timeout must be a whole number of seconds, 1 to {MAX_REQUESTED_TIMEOUT_S}")
    string_field(doc, "group_id", required=False)
    return timeout


@dataclass(frozen=True)
class ChallengeAnswer:
    """A mapping verify body: the node's signature of the request's challenge, as the client relays it."""
    request_id: str
    node_id: str
    signature: bytes


def challenge_answer(doc: dict) -> ChallengeAnswer:
    """A mapping verify body (docs/protocol.md 7.1), checked in the order its fields are documented."""
    request_id = string_field(doc, "request_id")
    node_id = _node_id_field(doc)
    hex_signature = string_field(doc, "challenge_response", max_len=2 * MAX_SIGNATURE_BYTES)
    if len(hex_signature) % 2 or not _HEX_RE.fullmatch(hex_signature):
        raise ApiError(400, E_BAD_FIELD, "challenge_response must be the node's signature in hex (an even "
                       "number of 0-9 a-f)")
    _check_tags_and_metadata(doc)
    string_field(doc, "group_id", required=False)
    return ChallengeAnswer(request_id, node_id, bytes.fromhex(hex_signature))


# ------------------------------------------------------------------------------------- query string

def query_param(name: str, max_len: int = MAX_ID_LEN, required: bool = False) -> Optional[str]:
    value = request.args.get(name)
    if value is None:
        if required:
            raise ApiError(400, E_MISSING_FIELD, f"missing query parameter: {name}")
        return None
    if not value or len(value) > max_len:
        raise ApiError(400, E_BAD_FIELD, f"query parameter {name} must be 1 to {max_len} characters")
    return _text(value, f"query parameter {name}")


def page_size() -> int:
    text = request.args.get("num_records", str(DEFAULT_PAGE_SIZE))
    # isdigit() alone takes "²" and 5,000-digit numbers, which int() refuses or chokes on
    if not (text.isascii() and text.isdigit() and len(text) <= 3 and 1 <= int(text) <= MAX_PAGE_SIZE):
        raise ApiError(400, E_BAD_FIELD, f"num_records must be 1 to {MAX_PAGE_SIZE}")
    return int(text)


def logout_all() -> bool:
    everywhere = request.args.get("logout_all", "false").lower()
    if everywhere not in ("true", "false"):
        raise ApiError(400, E_BAD_FIELD, "logout_all must be true or false")
    return everywhere == "true"


# ------------------------------------------------------------------------------------------ headers

def access_token() -> str:
    token = request.headers.get("Authorization", "").strip()
    if not token:
        raise ApiError(401, E_NO_TOKEN, "missing Authorization header (access token)")
    if not token.isascii() or len(token) > MAX_TOKEN_LEN:  # tokens are ASCII; compare_digest refuses the rest
        raise ApiError(401, E_BAD_TOKEN, "Unauthorized: the Authorization header is not a token")
    return token
