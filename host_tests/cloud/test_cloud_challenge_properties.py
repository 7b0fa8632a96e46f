"""Property-based tests of challenge-response mapping's REST endpoints (Hypothesis), in the style of
test_cloud_api_properties.py: arbitrary JSON bodies and raw bytes on initiate and verify, with real request ids,
node ids and signatures mixed in. Whatever comes in, the answer is never a 5xx, a 4xx is the API's JSON error
shape and maps nothing, and only a verify that reached the signature check changes anything (it spends
the challenge it names: docs/protocol.md 7.1)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from support.fixtures_cloud import PASSWORD, db_snapshot, sign_challenge
from rmkit.cloud.accounts import Accounts
from rmkit.cloud.api import create_app
from rmkit.cloud.challenge_mapping import MAX_LIFETIME_S, ChallengeService
from rmkit.cloud.mapping import MappingService
from rmkit.cloud.node_registry import PkiNodeRegistry
from rmkit.cloud.storage import Storage

NODE = "NODEA0000001"
ANY_CHAR = st.characters(exclude_categories=())  # lone surrogates included: JSON can carry "\ud800"
TEXT = st.text(alphabet=ANY_CHAR, max_size=40)
JSON_LEAF = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT
             | st.sampled_from(["", "00", "3044", "N1\n", "0x30", "²", "360"]))
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(alphabet=ANY_CHAR, max_size=10), inner, max_size=4), max_leaves=12)
# stand-ins the test replaces with real values of this run: the open request, someone else's, the node, signatures
REAL = st.sampled_from(["$open", "$bobs", "$node", "$signature", "$signature-upper", "$other-signature"])
VERIFY_FIELDS = ["request_id", "node_id", "challenge_response", "tags", "metadata", "group_id"]
INITIATE_BODY = st.fixed_dictionaries({}, optional={"timeout": JSON_VALUE | st.integers(-10, 100000),
                                                    "group_id": JSON_VALUE})
SHORT_TEXT = st.text(alphabet=ANY_CHAR, max_size=12)
OPTIONAL_FIELDS = {"tags": st.lists(SHORT_TEXT, max_size=3) | JSON_VALUE,
                   "metadata": st.dictionaries(SHORT_TEXT, SHORT_TEXT, max_size=2) | JSON_VALUE,
                   "group_id": SHORT_TEXT | JSON_VALUE}
VERIFY_BODY = st.one_of(
    # anything at all
    st.fixed_dictionaries({}, optional={name: REAL | JSON_VALUE for name in VERIFY_FIELDS}),
    # the three fields there, mostly right: the cases the signature check and the challenge's state decide
    st.fixed_dictionaries({"request_id": st.sampled_from(["$open", "$open", "$open", "$bobs", "0" * 32]),
                           "node_id": st.sampled_from(["$node", "$node", "NODEB0000002", "NODEC0000003"]),
                           "challenge_response": st.sampled_from(["$signature", "$signature", "$signature-upper",
                                                                  "$other-signature", "3044"])},
                          optional=OPTIONAL_FIELDS),
)


class Clock:
    def __init__(self):
        self.now = 1.0e9

    def __call__(self):
        return self.now


@pytest.fixture
def app(tmp_path, node_pki):
    storage = Storage(tmp_path / "cloud.db")
    accounts = Accounts(storage)
    users = {name: accounts.add_user(f"{name}@example.com", PASSWORD) for name in ("alice", "bob")}
    token = accounts.login("alice@example.com", PASSWORD).accesstoken
    clock = Clock()
    challenges = ChallengeService(storage, PkiNodeRegistry(node_pki.directory), clock=clock)
    client = create_app(accounts, MappingService(storage), challenges).test_client()
    yield client, token, tmp_path / "cloud.db", challenges, users, clock, node_pki
    storage.close()


def check_failure_shape(response):
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        body = response.get_json(silent=True)
        assert isinstance(body, dict) and body.get("status") == "failure", response.get_data(as_text=True)
        assert isinstance(body.get("error_code"), int) and body.get("description")


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=INITIATE_BODY.map(lambda doc: json.dumps(doc).encode()) | st.binary(max_size=100)
       | JSON_VALUE.map(lambda value: json.dumps(value).encode()))
def test_initiate_with_any_body_issues_one_challenge_or_changes_nothing(app, body):
    client, token, db_path, _, _, clock, _ = app
    clock.now += MAX_LIFETIME_S + 1  # earlier examples' challenges expire: no example meets the per-user limit
    before = db_snapshot(db_path)
    response = client.post("/v1/user/nodes/mapping/initiate", data=body, headers={"Authorization": token},
                           content_type="application/json")
    check_failure_shape(response)
    event(f"initiate -> {response.status_code}")
    after = db_snapshot(db_path)
    if response.status_code >= 400:
        assert after == before
        return
    issued = [row for row in after["mapping_challenges"] if row not in before["mapping_challenges"]]
    assert len(issued) == 1 and issued[0][2] == response.get_json()["challenge"]
    assert after["user_nodes"] == before["user_nodes"]


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=VERIFY_BODY, raw=st.one_of(st.none(), st.none(), st.none(), st.binary(max_size=100)),
       late=st.booleans(), again=st.booleans())
def test_verify_with_any_body_maps_only_a_real_signature_of_an_open_challenge(app, body, raw, late, again):
    client, token, db_path, challenges, users, clock, pki = app
    clock.now += MAX_LIFETIME_S + 1
    mine = challenges.initiate(users["alice"])
    bobs = challenges.initiate(users["bob"])
    signatures = {node_id: sign_challenge(pki.node_identity(node_id), mine.challenge)
                  for node_id in (NODE, "NODEB0000002")}
    real = {"$open": mine.request_id, "$bobs": bobs.request_id, "$node": NODE, "$signature": signatures[NODE],
            "$signature-upper": signatures[NODE].upper(), "$other-signature": signatures["NODEB0000002"]}
    doc = {key: real.get(value, value) if isinstance(value, str) else value for key, value in body.items()}
    data = raw if raw is not None else json.dumps(doc).encode()
    if late:
        clock.now += 361  # past the challenge's 360 s
    for attempt in range(2 if again else 1):  # the second time, a replay
        before = db_snapshot(db_path)
        response = client.post("/v1/user/nodes/mapping/verify", data=data, headers={"Authorization": token},
                               content_type="application/json")
        check_failure_shape(response)
        event(f"verify {'again ' if attempt else ''}-> {response.status_code}")
        after = db_snapshot(db_path)
        changed = [row for row in after["mapping_challenges"] if row not in before["mapping_challenges"]]
        if response.status_code >= 400:
            assert after["user_nodes"] == before["user_nodes"]
            assert after["mapping_requests"] == before["mapping_requests"]
            # at most the named open challenge was spent, by a verify that reached the signature check
            assert [(row[0], row[3]) for row in changed] in ([], [(mine.request_id, "discarded")])
            continue
        assert not late and attempt == 0
        # mapped: alice's open challenge, signed by the very node the body names
        assert doc["request_id"] == mine.request_id
        assert doc["challenge_response"].lower() == signatures[doc["node_id"]]
        assert [(row[0], row[3]) for row in changed] == [(mine.request_id, "confirmed")]
        assert (users["alice"], doc["node_id"]) in [(row[0], row[1]) for row in after["user_nodes"]]
