"""GET /apiversions: the one call outside v1/, asked by the CLI before it refreshes a token
(docs/protocol.md 6). Needs no token: the token it would need is the expired one."""

from __future__ import annotations

from flask import Blueprint

from rmkit.cloud.api.errors import json_response

versions = Blueprint("versions", __name__)


@versions.get("/apiversions")
def apiversions():
    return json_response({"supported_versions": ["v1"]})
