"""Accounts over REST: login2 (password login or token refresh), logout2, and who the token's user is."""

from __future__ import annotations

from flask import Blueprint, g, request

from rmkit.cloud.accounts import AccountError
from rmkit.cloud.api import inputs
from rmkit.cloud.api.auth import requires_user
from rmkit.cloud.api.backends import backends
from rmkit.cloud.api.errors import (E_BAD_TOKEN, E_LOGIN, E_NOT_FOUND, E_TOO_MANY_LOGINS, ApiError, json_response,
                                    success)
from rmkit.cloud.tokens import AccessClaims

users = Blueprint("users", __name__, url_prefix="/v1")


@users.post("/login2")
def login2():
    # the one v1 call without a token: it is where tokens come from
    req = inputs.login_request(inputs.json_body())
    accounts = backends().accounts
    if req.refresh_token is not None:
        try:
            tokens = accounts.refresh(req.refresh_token)
        except AccountError as exc:
            raise ApiError(401, E_BAD_TOKEN, str(exc)) from None
        return success(description="Token refreshed", idtoken=tokens.idtoken, accesstoken=tokens.accesstoken)
    try:
        tokens = accounts.login(req.user_name, req.password, request.remote_addr or "-")
    except AccountError as exc:
        if exc.kind == "throttled":
            raise ApiError(429, E_TOO_MANY_LOGINS, str(exc), retry_after_s=exc.retry_after_s) from None
        raise ApiError(401, E_LOGIN, str(exc)) from None
    g.user_id = "(login)"
    # no "session" key: its presence switches the CLI to OTP login (docs/protocol.md 6)
    return success(description="Login successful", idtoken=tokens.idtoken, accesstoken=tokens.accesstoken,
                   refreshtoken=tokens.refreshtoken)


@users.post("/logout2")
@requires_user
def logout2(claims: AccessClaims):
    backends().accounts.logout(claims, inputs.logout_all())  # the CLI sends no body
    return success(description="Logged out")


@users.get("/user")
@requires_user
def user(claims: AccessClaims):
    record = backends().accounts.user(claims.user_id)
    if record is None:
        raise ApiError(404, E_NOT_FOUND, "user not found")
    return json_response({"user_id": record.user_id, "user_name": record.email, "super_admin": False,
                          "picture_url": "", "name": ""})
