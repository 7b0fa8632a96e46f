"""Challenge-response user-node mapping over REST (docs/protocol.md 7.1): POST user/nodes/mapping/initiate and /verify.

Views take checked input from `inputs`, leave the decision to ChallengeService and put its answer,
or its refusal, into RainMaker's response shape. The status of such a request is asked like any
other mapping request's, GET user/nodes/mapping?request_id= (api.nodes).
"""

from __future__ import annotations

from flask import Blueprint

from rmkit.cloud.api import inputs
from rmkit.cloud.api.auth import requires_user
from rmkit.cloud.api.backends import backends
from rmkit.cloud.api.errors import (E_BAD_CHALLENGE_RESPONSE, E_CHALLENGE_EXPIRED, E_CHALLENGE_USED,
                                    E_NODE_KEY_UNSUPPORTED, E_NODE_UNKNOWN, E_REQUEST_NOT_FOUND,
                                    E_TOO_MANY_CHALLENGES, ApiError, success)
from rmkit.cloud.challenge_mapping import ChallengeRefused
from rmkit.cloud.tokens import AccessClaims

challenges = Blueprint("challenges", __name__, url_prefix="/v1")

# ChallengeRefused.kind -> (HTTP status, error_code)
_REFUSALS = {
    "unknown_request": (404, E_REQUEST_NOT_FOUND),
    "used": (409, E_CHALLENGE_USED),
    "expired": (410, E_CHALLENGE_EXPIRED),
    "node_unknown": (400, E_NODE_UNKNOWN),
    "node_key_unsupported": (400, E_NODE_KEY_UNSUPPORTED),
    "bad_signature": (400, E_BAD_CHALLENGE_RESPONSE),
    "too_many": (429, E_TOO_MANY_CHALLENGES),
}


def _api_error(refusal: ChallengeRefused) -> ApiError:
    http_status, error_code = _REFUSALS[refusal.kind]
    return ApiError(http_status, error_code, str(refusal))


@challenges.post("/user/nodes/mapping/initiate")
@requires_user
def initiate(claims: AccessClaims):
    timeout_s = inputs.challenge_timeout(inputs.json_body(empty_is_object=True))  # the TS SDK may send {}
    try:
        challenge = backends().challenges.initiate(claims.user_id, timeout_s)
    except ChallengeRefused as refusal:
        raise _api_error(refusal) from None
    return success(request_id=challenge.request_id, challenge=challenge.challenge,
                   description="Challenge issued: have the node sign it, then verify")


@challenges.post("/user/nodes/mapping/verify")
@requires_user
def verify(claims: AccessClaims):
    answer = inputs.challenge_answer(inputs.json_body())
    try:
        settled = backends().challenges.verify(claims.user_id, answer.request_id, answer.node_id, answer.signature)
    except ChallengeRefused as refusal:
        raise _api_error(refusal) from None
    # the TS SDK requires status "success" here; esp-rainmaker-cli only looks at the HTTP status
    return success(request_id=settled.request_id, node_id=settled.node_id,
                   description=f"Node {settled.node_id} mapped to the user")
