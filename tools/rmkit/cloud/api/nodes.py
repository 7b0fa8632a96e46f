"""The user's nodes over REST: the paged node list and mapping requests (add, remove, status of these and of
challenge-response requests).

Views here only take checked input from `inputs` and put the mapping service's answer into
RainMaker's response shape (docs/protocol.md 6); what a request means is MappingService's business.
"""

from __future__ import annotations

from flask import Blueprint

from rmkit.cloud.api import inputs
from rmkit.cloud.api.auth import requires_user
from rmkit.cloud.api.backends import backends
from rmkit.cloud.api.errors import E_NODE_NOT_MAPPED, E_REQUEST_NOT_FOUND, ApiError, json_response, success
from rmkit.cloud.tokens import AccessClaims

nodes = Blueprint("nodes", __name__, url_prefix="/v1")


@nodes.get("/user/nodes")
@requires_user
def user_nodes(claims: AccessClaims):
    start_id = inputs.query_param("start_id")
    limit = inputs.page_size()
    page = backends().mapping.user_nodes(claims.user_id, start_id, limit)
    body = {"nodes": page.nodes, "total": page.total}
    if page.next_id is not None:
        body["next_id"] = page.next_id  # the CLI asks for the next page with ?start_id=<next_id>
    return json_response(body)


@nodes.put("/user/nodes/mapping")
@requires_user
def put_mapping(claims: AccessClaims):
    change = inputs.mapping_change(inputs.json_body(), claims.user_id)
    mapping = backends().mapping
    if change.operation == "add":
        req = mapping.request_add(claims.user_id, change.node_id, change.secret_key)
    else:
        req = mapping.request_remove(claims.user_id, change.node_id)
        if req is None:
            raise ApiError(404, E_NODE_NOT_MAPPED, f"node {change.node_id} is not associated with this user")
    return success(request_id=req.request_id, description="Mapping request recorded")


@nodes.get("/user/nodes/mapping")
@requires_user
def get_mapping(claims: AccessClaims):
    # the CLI sends `?&request_id=`; Werkzeug skips the empty pair, so request.args sees request_id
    request_id = inputs.query_param("request_id", required=True)
    req = backends().mapping.request_status(claims.user_id, request_id)
    if req is not None:
        return json_response({"request_id": req.request_id, "request_status": req.status,
                              "node_id": req.node_id, "operation": req.operation})
    # a challenge-response request (docs/protocol.md 7.1): requested, confirmed, discarded or timedout
    challenge = backends().challenges.request_status(claims.user_id, request_id)
    if challenge is None:  # unknown and another user's request look the same
        raise ApiError(404, E_REQUEST_NOT_FOUND, "mapping request not found")
    return json_response({"request_id": challenge.request_id, "request_status": challenge.status,
                          "node_id": challenge.node_id, "operation": "add"})
