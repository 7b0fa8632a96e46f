"""REST API of the local cloud: login/tokens, every endpoint, every bad input (nothing stored changes), user isolation."""

import base64
import json
import time

import pytest

from support.fixtures_cloud import PASSWORD, ApiClient, db_snapshot
from rmkit.cloud.tokens import TokenSigner


@pytest.fixture
def api(cloud_service):
    return ApiClient(cloud_service.base_url)


@pytest.fixture
def alice(cloud_service, api):
    user_id = cloud_service.add_user("alice@example.com", PASSWORD)
    tokens = api.login("alice@example.com")
    return {"user_id": user_id, **tokens}


@pytest.fixture
def bob(cloud_service, api):
    user_id = cloud_service.add_user("bob@example.com", PASSWORD)
    tokens = api.login("bob@example.com")
    return {"user_id": user_id, **tokens}


def cli_decode(segment: str) -> dict:
    """Exactly how esp-rainmaker-cli decodes a token payload: standard alphabet, '=' padded."""
    return json.loads(base64.b64decode(segment + "=" * (-len(segment) % 4)))


def assert_failure(resp, http_status, error_code=None):
    assert resp.status == http_status, resp.text
    assert resp.body["status"] == "failure", resp.text
    assert isinstance(resp.body["error_code"], int) and resp.body["description"], resp.text
    if error_code is not None:
        assert resp.body["error_code"] == error_code, resp.text


# ------------------------------------------------------------------------------- no-auth endpoints

def test_apiversions_lists_v1(api):
    resp = api.request("GET", "/apiversions")
    assert resp.status == 200 and resp.body == {"supported_versions": ["v1"]}


def test_login_returns_tokens_the_cli_can_decode(api, alice):
    for name in ("idtoken", "accesstoken"):
        header, payload, signature = alice[name].split(".")
        assert not set("-_+/") & set(payload), payload
        claims = cli_decode(payload)
        assert claims["custom:user_id"] == alice["user_id"]
        assert claims["email"] == "alice@example.com"
        assert claims["exp"] > time.time()
    assert cli_decode(alice["idtoken"].split(".")[1])["token_use"] == "id"
    assert "session" not in alice  # would switch the CLI to OTP login
    assert alice["refreshtoken"]


def test_login_with_wrong_password_is_rejected(api, alice):
    resp = api.request("POST", "/v1/login2", {"user_name": "alice@example.com", "password": "wrong password"})
    assert_failure(resp, 401, 101009)


def test_login_of_unknown_user_gives_the_same_error(api, alice):
    resp = api.request("POST", "/v1/login2", {"user_name": "nobody@example.com", "password": PASSWORD})
    assert_failure(resp, 401, 101009)
    wrong = api.request("POST", "/v1/login2", {"user_name": "alice@example.com", "password": "wrong password"})
    assert resp.body == wrong.body


def test_login_with_malformed_json_is_rejected(api, cloud_service, alice):
    before = db_snapshot(cloud_service.storage.path)
    resp = api.request("POST", "/v1/login2", raw=b'{"user_name": "alice@example.com", ')
    assert_failure(resp, 400, 100001)
    assert db_snapshot(cloud_service.storage.path) == before


def test_login_without_password_is_rejected(api, alice):
    assert_failure(api.request("POST", "/v1/login2", {"user_name": "alice@example.com"}), 400, 100002)


def test_login_with_non_string_password_is_rejected(api, alice):
    resp = api.request("POST", "/v1/login2", {"user_name": "alice@example.com", "password": 12345678})
    assert_failure(resp, 400, 100003)


def test_refresh_token_gives_fresh_working_tokens(api, alice):
    resp = api.request("POST", "/v1/login2", {"refreshtoken": alice["refreshtoken"]})
    assert resp.status == 200 and resp.body["status"] == "success", resp.text
    assert cli_decode(resp.body["idtoken"].split(".")[1])["custom:user_id"] == alice["user_id"]
    assert api.request("GET", "/v1/user", token=resp.body["accesstoken"]).status == 200


def test_unknown_refresh_token_is_rejected(api, alice):
    assert_failure(api.request("POST", "/v1/login2", {"refreshtoken": "not-a-refresh-token"}), 401, 101011)


# ----------------------------------------------------------------------------------------- tokens

def test_request_without_token_is_unauthorized(api, alice):
    assert_failure(api.request("GET", "/v1/user/nodes"), 401, 101010)


def test_request_with_garbage_token_is_unauthorized(api, alice):
    assert_failure(api.request("GET", "/v1/user/nodes", token="garbage"), 401, 101011)


def test_request_with_forged_signature_is_unauthorized(api, alice):
    header, payload, signature = alice["accesstoken"].split(".")
    forged = header + "." + payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    assert_failure(api.request("GET", "/v1/user/nodes", token=forged), 401, 101011)


def test_token_signed_by_another_deployment_is_unauthorized(api, alice):
    claims = cli_decode(alice["accesstoken"].split(".")[1])
    other = TokenSigner(b"another deployment's secret").issue(alice["user_id"], "alice@example.com",
                                                               claims["sid"], "access")
    assert_failure(api.request("GET", "/v1/user", token=other), 401, 101011)


def test_expired_token_is_unauthorized(api, cloud_service, alice):
    claims = cli_decode(alice["accesstoken"].split(".")[1])
    expired = cloud_service.accounts.signer.issue(alice["user_id"], "alice@example.com", claims["sid"], "access",
                                                  now=time.time() - 2 * 3600)
    assert_failure(api.request("GET", "/v1/user", token=expired), 401, 101012)


def test_id_token_is_not_an_access_token(api, alice):
    assert_failure(api.request("GET", "/v1/user", token=alice["idtoken"]), 401, 101011)


def test_bearer_prefix_is_not_accepted(api, alice):
    # RainMaker takes the raw token (docs/protocol.md 6); a "Bearer " prefix is a client bug
    assert_failure(api.request("GET", "/v1/user", token="Bearer " + alice["accesstoken"]), 401, 101011)


def test_logout_ends_the_session(api, alice):
    resp = api.request("POST", "/v1/logout2?logout_all=false", token=alice["accesstoken"])
    assert resp.status == 200 and resp.body["status"] == "success"
    assert_failure(api.request("GET", "/v1/user", token=alice["accesstoken"]), 401, 101011)
    assert_failure(api.request("POST", "/v1/login2", {"refreshtoken": alice["refreshtoken"]}), 401)


def test_logout_keeps_other_sessions_unless_logout_all(api, alice):
    second = api.login("alice@example.com")
    api.request("POST", "/v1/logout2?logout_all=false", token=alice["accesstoken"])
    assert api.request("GET", "/v1/user", token=second["accesstoken"]).status == 200
    third = api.login("alice@example.com")
    assert api.request("POST", "/v1/logout2?logout_all=true", token=third["accesstoken"]).status == 200
    assert api.request("GET", "/v1/user", token=second["accesstoken"]).status == 401


def test_logout_with_bad_logout_all_is_rejected(api, alice):
    assert_failure(api.request("POST", "/v1/logout2?logout_all=maybe", token=alice["accesstoken"]), 400)
    assert api.request("GET", "/v1/user", token=alice["accesstoken"]).status == 200


# ----------------------------------------------------------------------------------- user + nodes

def test_get_user_describes_the_token_user(api, alice):
    resp = api.request("GET", "/v1/user", token=alice["accesstoken"])
    assert resp.status == 200
    assert resp.body["user_id"] == alice["user_id"] and resp.body["user_name"] == "alice@example.com"


def test_user_without_nodes_gets_an_empty_list(api, alice):
    resp = api.request("GET", "/v1/user/nodes", token=alice["accesstoken"])
    assert resp.status == 200 and resp.body["nodes"] == [] and "next_id" not in resp.body


def test_user_nodes_are_paged_with_next_id(api, cloud_service, alice):
    node_ids = [f"NODE{i:02d}" for i in range(7)]
    with cloud_service.storage.transaction() as tx:
        for node_id in reversed(node_ids):
            tx.add_user_node(alice["user_id"], node_id, time.time())
    pages, query = [], "?num_records=3"
    while True:
        resp = api.request("GET", "/v1/user/nodes" + query, token=alice["accesstoken"])
        assert resp.status == 200 and resp.body["total"] == 7
        pages.append(resp.body["nodes"])
        if "next_id" not in resp.body:
            break
        query = f"?num_records=3&start_id={resp.body['next_id']}"
    assert pages == [node_ids[0:3], node_ids[3:6], node_ids[6:7]]
    assert api.nodes(alice["accesstoken"]) == node_ids  # default page size: one page


@pytest.mark.parametrize("query", ["num_records=0", "num_records=101", "num_records=x", "start_id=" + "N" * 129])
def test_bad_paging_parameters_are_rejected(api, alice, query):
    assert_failure(api.request("GET", "/v1/user/nodes?" + query, token=alice["accesstoken"]), 400, 100003)


# ---------------------------------------------------------------------------------- PUT mapping

def test_put_mapping_returns_a_request_id_and_status_requested(api, alice):
    resp = api.put_mapping(alice["accesstoken"], "NODE1", "secret-1", user_id=alice["user_id"])
    assert resp.status == 200 and resp.body["request_id"], resp.text
    status = api.mapping_status(alice["accesstoken"], resp.body["request_id"])
    assert status.status == 200 and status.body["request_status"] == "requested"
    # also without the CLI's stray '&'
    plain = api.request("GET", f"/v1/user/nodes/mapping?request_id={resp.body['request_id']}",
                        token=alice["accesstoken"])
    assert plain.body["request_status"] == "requested"


def test_put_mapping_accepts_tags_and_metadata(api, alice):
    resp = api.request("PUT", "/v1/user/nodes/mapping",
                       {"node_id": "NODE1", "secret_key": "s", "operation": "add", "tags": ["room:lab"],
                        "metadata": {"serial": 7}}, token=alice["accesstoken"])
    assert resp.status == 200 and resp.body["request_id"]


BAD_PUT_BODIES = {
    "malformed_json": (b'{"node_id": "NODE1", "secret_key": ', 400, 100001),
    "not_an_object": (b'["NODE1", "secret", "add"]', 400, 100001),
    "empty_body": (b"", 400, 100001),
    "missing_operation": ({"node_id": "NODE1", "secret_key": "s"}, 400, 100002),
    "missing_node_id": ({"secret_key": "s", "operation": "add"}, 400, 100002),
    "missing_secret_key": ({"node_id": "NODE1", "operation": "add"}, 400, 100002),
    "unknown_operation": ({"node_id": "NODE1", "secret_key": "s", "operation": "share"}, 400, 100004),
    "operation_not_string": ({"node_id": "NODE1", "secret_key": "s", "operation": 1}, 400, 100003),
    "node_id_not_string": ({"node_id": 12345, "secret_key": "s", "operation": "add"}, 400, 100003),
    "secret_key_not_string": ({"node_id": "NODE1", "secret_key": None, "operation": "add"}, 400, 100003),
    "empty_secret_key": ({"node_id": "NODE1", "secret_key": "", "operation": "add"}, 400, 100003),
    "node_id_too_long": ({"node_id": "N" * 129, "secret_key": "s", "operation": "add"}, 400, 100003),
    "secret_key_too_long": ({"node_id": "NODE1", "secret_key": "s" * 129, "operation": "add"}, 400, 100003),
    "node_id_with_topic_chars": ({"node_id": "NODE1/#", "secret_key": "s", "operation": "add"}, 400, 100003),
    "tags_not_a_list": ({"node_id": "NODE1", "secret_key": "s", "operation": "add", "tags": "a:b"}, 400, 100003),
    "another_users_id_in_body": ({"node_id": "NODE1", "secret_key": "s", "operation": "add",
                                  "user_id": "someoneElse"}, 400, 100005),
    "body_too_large": ({"node_id": "NODE1", "secret_key": "s", "operation": "add",
                        "metadata": {"x": "y" * 20000}}, 413, 100413),
}


@pytest.mark.parametrize("case", sorted(BAD_PUT_BODIES))
def test_bad_put_mapping_is_rejected_and_changes_nothing(api, cloud_service, alice, case):
    body, http_status, error_code = BAD_PUT_BODIES[case]
    before = db_snapshot(cloud_service.storage.path)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = api.request("PUT", "/v1/user/nodes/mapping", raw=raw, token=alice["accesstoken"])
    assert_failure(resp, http_status, error_code)
    assert db_snapshot(cloud_service.storage.path) == before


def test_put_mapping_without_token_changes_nothing(api, cloud_service, alice):
    before = db_snapshot(cloud_service.storage.path)
    assert_failure(api.put_mapping("", "NODE1", "s"), 401, 101010)
    assert db_snapshot(cloud_service.storage.path) == before


def test_removing_a_node_the_user_does_not_have_is_not_found(api, cloud_service, alice):
    before = db_snapshot(cloud_service.storage.path)
    assert_failure(api.put_mapping(alice["accesstoken"], "NODE1", "", operation="remove"), 404, 102002)
    assert db_snapshot(cloud_service.storage.path) == before


# ----------------------------------------------------------------------------- mapping status

def test_polling_an_unknown_request_id_is_not_found(api, alice):
    assert_failure(api.mapping_status(alice["accesstoken"], "0" * 32), 404, 102001)


def test_polling_without_request_id_is_rejected(api, alice):
    assert_failure(api.request("GET", "/v1/user/nodes/mapping?&", token=alice["accesstoken"]), 400, 100002)


def test_polling_with_overlong_request_id_is_rejected(api, alice):
    assert_failure(api.mapping_status(alice["accesstoken"], "r" * 129), 400, 100003)


# ------------------------------------------------------------------------------- user isolation

def test_another_users_request_looks_not_found(api, alice, bob):
    request_id = api.put_mapping(alice["accesstoken"], "NODE1", "s").body["request_id"]
    theirs = api.mapping_status(bob["accesstoken"], request_id)
    unknown = api.mapping_status(bob["accesstoken"], "0" * 32)
    assert_failure(theirs, 404, 102001)
    assert theirs.body == unknown.body
    assert api.mapping_status(alice["accesstoken"], request_id).body["request_status"] == "requested"


def test_users_see_only_their_own_nodes_and_cannot_remove_others(api, cloud_service, alice, bob):
    with cloud_service.storage.transaction() as tx:
        tx.add_user_node(alice["user_id"], "ALICENODE", time.time())
    assert api.nodes(bob["accesstoken"]) == []
    assert_failure(api.put_mapping(bob["accesstoken"], "ALICENODE", "", operation="remove"), 404, 102002)
    assert api.nodes(alice["accesstoken"]) == ["ALICENODE"]


def test_user_id_comes_from_the_token_not_the_body(api, cloud_service, alice, bob):
    # Bob's token with Bob's id: the request is Bob's, even for a node Alice's client also asks for
    request_id = api.put_mapping(bob["accesstoken"], "NODE1", "s", user_id=bob["user_id"]).body["request_id"]
    assert cloud_service.mapping.request_status(bob["user_id"], request_id) is not None
    assert cloud_service.mapping.request_status(alice["user_id"], request_id) is None


# ---------------------------------------------------------------------------------- http edges

def test_unknown_path_is_json_not_found(api, alice):
    assert_failure(api.request("GET", "/v1/no/such/thing", token=alice["accesstoken"]), 404)


def test_wrong_method_is_json_method_not_allowed(api, alice):
    assert_failure(api.request("DELETE", "/v1/user/nodes", token=alice["accesstoken"]), 405)


def test_log_never_shows_tokens_or_passwords(api, cloud_service, alice, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    tokens = api.login("alice@example.com")
    api.put_mapping(tokens["accesstoken"], "NODE1", "very-secret-key")
    api.request("GET", "/v1/user", token=tokens["accesstoken"])
    text = caplog.text
    assert "PUT /v1/user/nodes/mapping -> 200" in text
    for secret in (PASSWORD, tokens["accesstoken"], tokens["idtoken"], tokens["refreshtoken"], "very-secret-key"):
        assert secret not in text
