"""`@requires_user`: the one gate in front of every view that acts for a user.

The user of a request is always the one in its access token (docs/protocol.md 6), never one named in
its body or query; so a view behind this decorator gets the token's claims as its first argument and
has no other way to learn who is asking.
"""

from __future__ import annotations

import functools
from typing import Callable

from flask import g

from rmkit.cloud.api import inputs
from rmkit.cloud.api.backends import backends
from rmkit.cloud.api.errors import E_BAD_TOKEN, E_EXPIRED_TOKEN, ApiError
from rmkit.cloud.tokens import TokenError


def requires_user(view: Callable) -> Callable:
    """401 (101010 no token, 101011 bad or revoked, 101012 expired) before the view runs; otherwise
    the view is called as view(claims, **url_args) and the request log names claims.user_id."""

    @functools.wraps(view)
    def guarded(**url_args):
        token = inputs.access_token()
        try:
            claims = backends().accounts.authenticate(token)
        except TokenError as exc:
            code = E_EXPIRED_TOKEN if exc.reason == "expired" else E_BAD_TOKEN
            raise ApiError(401, code, f"Unauthorized: {exc}") from None
        g.user_id = claims.user_id
        return view(claims, **url_args)

    return guarded
