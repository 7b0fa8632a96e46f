"""Challenge-response user-node mapping in the local cloud (docs/protocol.md 7.1): initiate, verify, the status
query, and every way a verify is refused, each with nothing mapped.

Most tests drive the Flask app directly with a clock of their own (no sleeps: expiry is the clock moving);
the last ones go over HTTP to a started CloudService, one with several HTTP processes.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID

from support.fixtures_cloud import PASSWORD, ApiClient, db_snapshot, sign_challenge
from rmkit.cloud import CloudService
from rmkit.cloud import challenge_mapping
from rmkit.cloud.accounts import Accounts
from rmkit.cloud.api import create_app
from rmkit.cloud.challenge_mapping import CHALLENGE_LENGTH, ChallengeRefused, ChallengeService
from rmkit.cloud.mapping import MappingService
from rmkit.cloud.node_registry import PkiNodeRegistry
from rmkit.cloud.storage import Storage

NODE_A, NODE_B = "NODEA0000001", "NODEB0000002"
INITIATE, VERIFY, STATUS = "/v1/user/nodes/mapping/initiate", "/v1/user/nodes/mapping/verify", "/v1/user/nodes/mapping"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class Clock:
    """A clock the test moves by hand (the challenges' only notion of time)."""

    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Cloud:
    """The REST app over one database, with alice and bob logged in, and a PKI that issued NODE_A and NODE_B."""

    def __init__(self, tmp_path, node_pki, registry=True):
        self.db_path = tmp_path / "cloud.db"
        self.storage = Storage(self.db_path)
        self.clock = Clock()
        self.pki = node_pki
        self.nodes = {node_id: node_pki.node_identity(node_id) for node_id in (NODE_A, NODE_B)}
        accounts = Accounts(self.storage)
        self.user_ids = {name: accounts.add_user(f"{name}@example.com", PASSWORD) for name in ("alice", "bob")}
        self.tokens = {name: accounts.login(f"{name}@example.com", PASSWORD).accesstoken for name in self.user_ids}
        self.challenges = ChallengeService(self.storage, PkiNodeRegistry(node_pki.directory) if registry else
                                           challenge_mapping.NoNodes(), clock=self.clock)
        self.client = create_app(accounts, MappingService(self.storage), self.challenges).test_client()

    def post(self, path, body=None, user="alice", raw=None):
        data = raw if raw is not None else json.dumps(body)
        headers = {"Authorization": self.tokens[user]} if user else {}
        return self.client.post(path, data=data, headers=headers, content_type="application/json")

    def initiate(self, user="alice", body=None) -> dict:
        response = self.post(INITIATE, {"timeout": 360} if body is None else body, user=user)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def verify(self, request_id, node_id, challenge_response, user="alice", **extra):
        body = {"request_id": request_id, "node_id": node_id, "challenge_response": challenge_response, **extra}
        return self.post(VERIFY, body, user=user)

    def sign(self, node_id, challenge) -> str:
        return sign_challenge(self.nodes[node_id], challenge)

    def status(self, request_id, user="alice"):
        return self.client.get(f"{STATUS}?&request_id={request_id}", headers={"Authorization": self.tokens[user]})

    def user_nodes(self, user="alice") -> list:
        response = self.client.get("/v1/user/nodes", headers={"Authorization": self.tokens[user]})
        assert response.status_code == 200
        return response.get_json()["nodes"]

    def mapped(self) -> list:
        """Every association (user_id, node_id) in storage."""
        return sorted((row[0], row[1]) for row in db_snapshot(self.db_path)["user_nodes"])

    def close(self):
        self.storage.close()


@pytest.fixture
def cloud(tmp_path, node_pki):
    made = Cloud(tmp_path, node_pki)
    yield made
    made.close()


def assert_refused(response, http_status, error_code):
    body = response.get_json()
    assert response.status_code == http_status, response.get_data(as_text=True)
    assert body["status"] == "failure" and body["error_code"] == error_code and body["description"], body
    assert "\n" not in body["description"]


# ----------------------------------------------------------------------------------------- initiate

def test_initiate_gives_a_request_id_and_a_challenge_a_node_will_sign(cloud):
    answer = cloud.initiate()
    assert answer["status"] == "success" and answer["request_id"]
    # docs/protocol.md 7.1: the node signs only 1..256 bytes of printable ASCII without spaces
    assert len(answer["challenge"]) == CHALLENGE_LENGTH == 64
    assert re.fullmatch(r"[A-Za-z0-9_-]{64}", answer["challenge"])
    assert all(0x21 <= ord(c) <= 0x7E for c in answer["challenge"])


def test_every_initiate_gives_a_new_challenge_and_request_id(cloud):
    answers = [cloud.initiate() for _ in range(5)]
    assert len({a["challenge"] for a in answers}) == 5 and len({a["request_id"] for a in answers}) == 5


@pytest.mark.parametrize("raw", [b"{}", b"", b'{"group_id": "G1"}'], ids=["empty object", "no body", "group_id"])
def test_initiate_without_a_timeout_gets_the_default_of_360_s(cloud, raw):
    # the TS SDK sends {} (or a group_id); the challenge is then open the 360 s esp-rainmaker-cli asks for
    response = cloud.post(INITIATE, raw=raw)
    assert response.status_code == 200, response.get_data(as_text=True)
    request_id, challenge = response.get_json()["request_id"], response.get_json()["challenge"]
    cloud.clock.advance(360)
    assert cloud.verify(request_id, NODE_A, cloud.sign(NODE_A, challenge)).status_code == 200


def test_a_timeout_longer_than_an_hour_is_cut_to_an_hour(cloud):
    answer = cloud.initiate(body={"timeout": 7200})
    cloud.clock.advance(3600.5)
    assert_refused(cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_A, answer["challenge"])), 410, 102004)


@pytest.mark.parametrize("timeout", [0, -1, 86401, 10 ** 30, "360", 360.0, 360.5, True, None, [360], {"s": 1}])
def test_a_nonsense_timeout_is_refused_and_issues_nothing(cloud, timeout):
    before = db_snapshot(cloud.db_path)
    assert_refused(cloud.post(INITIATE, {"timeout": timeout}), 400, 100003)
    assert db_snapshot(cloud.db_path) == before


@pytest.mark.parametrize("raw", [b'{"timeout": 360', b"[360]", b'"x"', b"\xff\xfe"])
def test_initiate_with_a_body_that_is_not_a_json_object_is_refused(cloud, raw):
    before = db_snapshot(cloud.db_path)
    assert_refused(cloud.post(INITIATE, raw=raw), 400, 100001)
    assert db_snapshot(cloud.db_path) == before


def test_initiate_and_verify_need_a_token(cloud):
    assert_refused(cloud.post(INITIATE, {"timeout": 360}, user=None), 401, 101010)
    assert_refused(cloud.post(VERIFY, {"request_id": "r", "node_id": NODE_A, "challenge_response": "00"}, user=None),
                   401, 101010)


def test_a_user_gets_at_most_so_many_open_challenges(cloud, monkeypatch):
    monkeypatch.setattr(challenge_mapping, "MAX_OPEN_CHALLENGES", 3)
    answers = [cloud.initiate() for _ in range(3)]
    assert_refused(cloud.post(INITIATE, {"timeout": 360}), 429, 102429)
    cloud.initiate(user="bob")  # another user's are counted apart
    # a used challenge is no longer open, nor is an expired one
    first = answers[0]
    assert cloud.verify(first["request_id"], NODE_A, cloud.sign(NODE_A, first["challenge"])).status_code == 200
    cloud.initiate()
    cloud.clock.advance(361)
    cloud.initiate()


# ------------------------------------------------------------------------------------------- verify

def test_a_node_signature_maps_the_node_to_the_user(cloud):
    answer = cloud.initiate()
    response = cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_A, answer["challenge"]))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "success" and body["description"]  # the TS SDK insists on status "success"
    assert cloud.user_nodes() == [NODE_A]
    assert cloud.user_nodes("bob") == []


def test_the_status_query_follows_a_challenge_request(cloud):
    answer = cloud.initiate()
    status = cloud.status(answer["request_id"])
    assert status.status_code == 200 and status.get_json()["request_status"] == "requested"
    cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_A, answer["challenge"]))
    status = cloud.status(answer["request_id"]).get_json()
    # as for the secret-key flow: esp-rainmaker-cli reads request_status
    assert status == {"request_id": answer["request_id"], "request_status": "confirmed", "node_id": NODE_A,
                      "operation": "add"}
    assert cloud.status(answer["request_id"], user="bob").status_code == 404


def test_tags_and_metadata_are_taken_as_esp_rainmaker_cli_sends_them(cloud):
    answer = cloud.initiate()
    response = cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_A, answer["challenge"]),
                            tags=["room:kitchen"], metadata={"serial": "42"})
    assert response.status_code == 200, response.get_data(as_text=True)


def test_upper_case_hex_is_taken_too(cloud):
    answer = cloud.initiate()
    upper = cloud.sign(NODE_A, answer["challenge"]).upper()
    assert cloud.verify(answer["request_id"], NODE_A, upper).status_code == 200


def test_a_high_s_signature_is_taken(cloud):
    # mbedtls does not normalize S: (r, n - s) is the same signature and a node may send either
    answer = cloud.initiate()
    r, s = utils.decode_dss_signature(bytes.fromhex(cloud.sign(NODE_A, answer["challenge"])))
    high_s = utils.encode_dss_signature(r, s if s > P256_ORDER // 2 else P256_ORDER - s)
    assert cloud.verify(answer["request_id"], NODE_A, high_s.hex()).status_code == 200


def test_a_node_mapped_to_another_user_keeps_that_user(cloud):
    # only the node's factory-reset report drops associations (docs/protocol.md 5.3), as upstream
    for user in ("bob", "alice"):
        answer = cloud.initiate(user=user)
        assert cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_A, answer["challenge"]),
                            user=user).status_code == 200
    assert cloud.mapped() == sorted([(cloud.user_ids["alice"], NODE_A), (cloud.user_ids["bob"], NODE_A)])


# ----------------------------------------------------------------------------- refused, nothing mapped

def test_an_unknown_request_is_refused(cloud):
    assert_refused(cloud.verify("0" * 32, NODE_A, "3044"), 404, 102001)
    assert cloud.mapped() == []


def test_another_users_request_is_refused_and_stays_usable_for_its_user(cloud):
    answer = cloud.initiate(user="alice")
    signature = cloud.sign(NODE_A, answer["challenge"])
    assert_refused(cloud.verify(answer["request_id"], NODE_A, signature, user="bob"), 404, 102001)
    assert cloud.mapped() == []
    assert cloud.verify(answer["request_id"], NODE_A, signature, user="alice").status_code == 200
    assert cloud.mapped() == [(cloud.user_ids["alice"], NODE_A)]


def test_a_node_id_whose_key_did_not_sign_is_refused(cloud):
    answer = cloud.initiate()
    response = cloud.verify(answer["request_id"], NODE_B, cloud.sign(NODE_A, answer["challenge"]))
    assert_refused(response, 400, 102007)
    assert NODE_B in response.get_json()["description"]
    assert cloud.mapped() == []


def test_a_node_without_a_certificate_is_unknown(cloud):
    answer = cloud.initiate()
    response = cloud.verify(answer["request_id"], "NODEC0000003", cloud.sign(NODE_A, answer["challenge"]))
    assert_refused(response, 400, 102005)
    assert "unknown" in response.get_json()["description"]
    assert cloud.mapped() == []


def test_a_signature_by_another_nodes_key_is_refused(cloud):
    answer = cloud.initiate()
    assert_refused(cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_B, answer["challenge"])), 400, 102007)
    assert cloud.mapped() == []


def test_a_signature_of_another_challenge_is_refused(cloud):
    first, second = cloud.initiate(), cloud.initiate()
    assert_refused(cloud.verify(second["request_id"], NODE_A, cloud.sign(NODE_A, first["challenge"])), 400, 102007)
    assert cloud.mapped() == []


def test_a_used_challenge_cannot_be_replayed(cloud):
    answer = cloud.initiate()
    signature = cloud.sign(NODE_A, answer["challenge"])
    assert cloud.verify(answer["request_id"], NODE_A, signature).status_code == 200
    assert_refused(cloud.verify(answer["request_id"], NODE_A, signature), 409, 102003)
    # nor sent again for another node's id by the same user
    assert_refused(cloud.verify(answer["request_id"], NODE_B, cloud.sign(NODE_B, answer["challenge"])), 409, 102003)
    assert cloud.mapped() == [(cloud.user_ids["alice"], NODE_A)]


def test_a_refused_verify_spends_the_challenge(cloud):
    answer = cloud.initiate()
    assert_refused(cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_B, answer["challenge"])), 400, 102007)
    # the right signature comes too late: one try per challenge
    assert_refused(cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_A, answer["challenge"])), 409, 102003)
    assert cloud.status(answer["request_id"]).get_json()["request_status"] == "discarded"
    assert cloud.mapped() == []


def test_an_unknown_node_spends_the_challenge_too(cloud):
    answer = cloud.initiate()
    assert_refused(cloud.verify(answer["request_id"], "NODEC0000003", "3044"), 400, 102005)
    assert_refused(cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_A, answer["challenge"])), 409, 102003)


def test_an_expired_challenge_is_refused(cloud):
    answer = cloud.initiate(body={"timeout": 60})
    signature = cloud.sign(NODE_A, answer["challenge"])
    cloud.clock.advance(60)
    assert cloud.status(answer["request_id"]).get_json()["request_status"] == "requested"  # open to the last second
    cloud.clock.advance(1)
    assert cloud.status(answer["request_id"]).get_json()["request_status"] == "timedout"
    assert_refused(cloud.verify(answer["request_id"], NODE_A, signature), 410, 102004)
    assert cloud.mapped() == []


@pytest.mark.parametrize("challenge_response", ["304", "zz", "30 44", "0x3044", "3044\n", "", "é1"],
                         ids=["odd length", "not hex", "space", "0x prefix", "newline", "empty", "non-ASCII"])
def test_a_malformed_hex_signature_is_refused_and_spends_nothing(cloud, challenge_response):
    answer = cloud.initiate()
    before = db_snapshot(cloud.db_path)
    assert_refused(cloud.verify(answer["request_id"], NODE_A, challenge_response), 400, 100003)
    assert db_snapshot(cloud.db_path) == before  # a shape error is not an attempt: the challenge is still open
    assert cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_A, answer["challenge"])).status_code == 200


def test_malformed_json_is_refused(cloud):
    before = db_snapshot(cloud.db_path)
    assert_refused(cloud.post(VERIFY, raw=b'{"request_id": "r", "node_id": '), 400, 100001)
    assert_refused(cloud.post(VERIFY, raw=b""), 400, 100001)
    assert db_snapshot(cloud.db_path) == before


@pytest.mark.parametrize("field", ["request_id", "node_id", "challenge_response"])
def test_a_missing_field_is_refused(cloud, field):
    answer = cloud.initiate()
    body = {"request_id": answer["request_id"], "node_id": NODE_A,
            "challenge_response": cloud.sign(NODE_A, answer["challenge"])}
    del body[field]
    before = db_snapshot(cloud.db_path)
    assert_refused(cloud.post(VERIFY, body), 400, 100002)
    assert db_snapshot(cloud.db_path) == before


@pytest.mark.parametrize("field, value", [
    ("request_id", 12), ("request_id", None), ("request_id", ""), ("node_id", ["N"]), ("node_id", "N 1"),
    ("node_id", "N1\n"), ("challenge_response", 3044), ("challenge_response", {"hex": "3044"}),
    ("tags", "room:kitchen"), ("tags", [1]), ("metadata", ["serial"]), ("group_id", 7),
])
def test_a_field_of_the_wrong_type_is_refused(cloud, field, value):
    answer = cloud.initiate()
    body = {"request_id": answer["request_id"], "node_id": NODE_A,
            "challenge_response": cloud.sign(NODE_A, answer["challenge"]), field: value}
    before = db_snapshot(cloud.db_path)
    assert_refused(cloud.post(VERIFY, body), 400, 100003)
    assert db_snapshot(cloud.db_path) == before


@pytest.mark.parametrize("field, value", [("request_id", "r" * 129), ("node_id", "N" * 129),
                                          ("challenge_response", "30" * 513), ("tags", ["t"] * 33)])
def test_an_oversize_field_is_refused(cloud, field, value):
    answer = cloud.initiate()
    body = {"request_id": answer["request_id"], "node_id": NODE_A, "challenge_response": "3044", field: value}
    before = db_snapshot(cloud.db_path)
    assert_refused(cloud.post(VERIFY, body), 400, 100003)
    assert db_snapshot(cloud.db_path) == before


def test_an_oversize_body_is_refused(cloud):
    response = cloud.post(VERIFY, {"request_id": "r", "node_id": NODE_A, "challenge_response": "30", "x": "y" * 20000})
    assert_refused(response, 413, 100413)


def test_every_refusal_has_its_http_answer():
    from rmkit.cloud.api import challenges

    assert set(challenges._REFUSALS) == set(ChallengeRefused.KINDS)


# ----------------------------------------------------------------------------------- the node registry

def test_a_cloud_without_a_pki_knows_no_node(tmp_path, node_pki):
    cloud = Cloud(tmp_path, node_pki, registry=False)
    try:
        answer = cloud.initiate()
        response = cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_A, answer["challenge"]))
        assert_refused(response, 400, 102005)
        assert cloud.mapped() == []
    finally:
        cloud.close()


def _issue(pki, node_id, key, issuer_key=None, issuer_name=None):
    """A node certificate (CN = node_id) for `key`, signed by the PKI's CA unless another issuer is given,
    written where rmkit.pki keeps node certificates."""
    from rmkit.pki import node_certificate_path

    if issuer_key is None:
        issuer_key = serialization.load_pem_private_key((pki.directory / "ca" / "ca.key.pem").read_bytes(), None)
        issuer_name = pki.ca_certificate.subject
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
            .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .sign(issuer_key, hashes.SHA256()))
    path = node_certificate_path(pki.directory, node_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_an_rsa_node_signs_with_pss_and_salt_32(cloud):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _issue(cloud.pki, "NODER0000004", key)
    answer = cloud.initiate()
    pss = key.sign(answer["challenge"].encode(), padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                   hashes.SHA256())
    assert cloud.verify(answer["request_id"], "NODER0000004", pss.hex()).status_code == 200
    # RainMaker's backend takes PSS only: a PKCS#1 v1.5 signature of the right challenge is refused
    answer = cloud.initiate()
    pkcs1 = key.sign(answer["challenge"].encode(), padding.PKCS1v15(), hashes.SHA256())
    assert_refused(cloud.verify(answer["request_id"], "NODER0000004", pkcs1.hex()), 400, 102007)


def test_a_node_key_that_cannot_sign_challenges_is_named(cloud):
    key = ec.generate_private_key(ec.SECP384R1())
    _issue(cloud.pki, "NODEP0000005", key)
    answer = cloud.initiate()
    signature = key.sign(answer["challenge"].encode(), ec.ECDSA(hashes.SHA256())).hex()
    response = cloud.verify(answer["request_id"], "NODEP0000005", signature)
    assert_refused(response, 400, 102006)
    assert "secp384r1" in response.get_json()["description"]
    assert cloud.mapped() == []


def test_a_certificate_the_ca_did_not_issue_is_not_a_node(cloud):
    # a file someone put into nodes/: self-signed, so the registry ignores it
    key = ec.generate_private_key(ec.SECP256R1())
    _issue(cloud.pki, "NODES0000006", key, issuer_key=key,
           issuer_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "NODES0000006")]))
    answer = cloud.initiate()
    signature = key.sign(answer["challenge"].encode(), ec.ECDSA(hashes.SHA256())).hex()
    assert_refused(cloud.verify(answer["request_id"], "NODES0000006", signature), 400, 102005)


def test_a_certificate_in_another_nodes_place_is_not_that_node(cloud):
    # NODE_B's certificate copied to where NODE_A's belongs: its CN is not NODE_A
    from rmkit.pki import node_certificate_path

    node_certificate_path(cloud.pki.directory, NODE_A).write_bytes(cloud.nodes[NODE_B].cert_pem.read_bytes())
    answer = cloud.initiate()
    assert_refused(cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_B, answer["challenge"])), 400, 102005)


def test_a_reissued_certificate_is_seen_at_once(cloud):
    answer = cloud.initiate()
    assert cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_A, answer["challenge"])).status_code == 200
    new_key = ec.generate_private_key(ec.SECP256R1())
    _issue(cloud.pki, NODE_A, new_key)
    answer = cloud.initiate()
    old_signature = cloud.sign(NODE_A, answer["challenge"])  # the identity's key file is the old key
    assert_refused(cloud.verify(answer["request_id"], NODE_A, old_signature), 400, 102007)
    answer = cloud.initiate()
    signature = new_key.sign(answer["challenge"].encode(), ec.ECDSA(hashes.SHA256())).hex()
    assert cloud.verify(answer["request_id"], NODE_A, signature).status_code == 200


@pytest.mark.parametrize("node_id", ["..", ".hidden", "NODE:1", "N" * 65])
def test_node_ids_that_are_no_pki_name_are_unknown(cloud, node_id):
    answer = cloud.initiate()
    assert_refused(cloud.verify(answer["request_id"], node_id, cloud.sign(NODE_A, answer["challenge"])), 400, 102005)


# ------------------------------------------------------------------------------- processes, logs, HTTP

def test_two_processes_racing_to_verify_one_challenge_settle_it_once(cloud):
    # a second service on the same database stands for a second HTTP process
    other_storage = Storage(cloud.db_path)
    other = ChallengeService(other_storage, PkiNodeRegistry(cloud.pki.directory), clock=cloud.clock)
    try:
        for _ in range(5):
            challenge = cloud.challenges.initiate(cloud.user_ids["alice"])
            signature = bytes.fromhex(cloud.sign(NODE_A, challenge.challenge))
            start, outcomes = threading.Barrier(2), []

            def verify(service):
                start.wait()
                try:
                    outcomes.append(service.verify(cloud.user_ids["alice"], challenge.request_id, NODE_A,
                                                   signature).status)
                except ChallengeRefused as refusal:
                    outcomes.append(refusal.kind)

            threads = [threading.Thread(target=verify, args=(service,)) for service in (cloud.challenges, other)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            assert sorted(outcomes) == ["confirmed", "used"]
    finally:
        other_storage.close()


def test_the_log_names_requests_and_nodes_but_never_the_token(cloud, caplog):
    caplog.set_level(logging.INFO, logger="rmkit.cloud")
    answer = cloud.initiate()
    cloud.verify(answer["request_id"], NODE_B, cloud.sign(NODE_A, answer["challenge"]))
    answer = cloud.initiate()
    cloud.verify(answer["request_id"], NODE_A, cloud.sign(NODE_A, answer["challenge"]))
    assert f"{answer['request_id']}: node {NODE_A} user {cloud.user_ids['alice']} -> confirmed" in caplog.text
    assert "-> discarded" in caplog.text
    assert cloud.tokens["alice"] not in caplog.text


def test_over_http_with_the_pki_the_cloud_service_was_given(pki_cloud_service, node_pki):
    api = ApiClient(pki_cloud_service.base_url)
    pki_cloud_service.add_user("alice@example.com", PASSWORD)
    token = api.login("alice@example.com")["accesstoken"]
    identity = node_pki.node_identity(NODE_A)
    answer = api.initiate_mapping(token).body
    response = api.verify_mapping(token, answer["request_id"], NODE_A, sign_challenge(identity, answer["challenge"]))
    assert response.status == 200 and response.body["status"] == "success", response.text
    assert api.mapping_status(token, answer["request_id"]).body["request_status"] == "confirmed"
    assert api.nodes(token) == [NODE_A]


def test_several_http_processes_share_the_challenges(tmp_path, node_pki):
    # requests land on whichever process accepts first: each must know the PKI and see the others' challenges
    service = CloudService(tmp_path / "cloud.db", port=0, pki_dir=node_pki.directory, http_processes=2).start()
    try:
        service.add_user("alice@example.com", PASSWORD)
        api = ApiClient(service.base_url)
        token = api.login("alice@example.com")["accesstoken"]
        node_ids = [f"NODEM{i:07d}" for i in range(8)]
        for node_id in node_ids:
            answer = api.initiate_mapping(token).body
            signature = sign_challenge(node_pki.node_identity(node_id), answer["challenge"])
            assert api.verify_mapping(token, answer["request_id"], node_id, signature).status == 200
            replay = api.verify_mapping(token, answer["request_id"], node_id, signature)
            assert replay.status == 409, replay.text
        assert api.nodes(token) == node_ids
    finally:
        service.stop()


def test_rmkit_cloud_serve_checks_with_its_pki(cloud_process_factory, node_pki):
    cloud = cloud_process_factory(extra_args=("--pki", str(node_pki.directory)))
    cloud.add_user("alice@example.com")
    api = ApiClient(cloud.base_url)
    token = api.login("alice@example.com")["accesstoken"]
    answer = api.initiate_mapping(token).body
    signature = sign_challenge(node_pki.node_identity(NODE_A), answer["challenge"])
    assert api.verify_mapping(token, answer["request_id"], NODE_A, signature).status == 200
    assert api.nodes(token) == [NODE_A]
    assert token not in cloud.log_text()


# ------------------------------------------------------------------------------------ the documented example

def test_the_example_of_docs_protocol_7_1_holds():
    """Every value of the worked example in docs/protocol.md 7.1, recomputed: key, digest, deterministic
    signature, wire bytes; and the cloud's check takes that signature."""
    import hashlib

    from support.paths import REPO_ROOT
    from rmkit.cloud.node_signature import signature_verifies
    from rmkit.proto import pb

    doc = (REPO_ROOT / "docs" / "protocol.md").read_text()
    section = doc[doc.index("### 7.1"):doc.index("### 7.2")]
    d = int.from_bytes(hashlib.sha256(b"rmkit docs/protocol.md 7.1 example node key").digest(), "big") % P256_ORDER
    key = ec.derive_private_key(d, ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    challenge = "q3Vd0Wk7hT2bXcNf9LmZsY8rAe1GuJpO4iKtH6vBwQx5Cy-Dz_EaSgRoUnMlIjPF"
    signature = key.sign(challenge.encode(), ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    command = pb.RMakerChRespPayload(msg=pb.RMakerChRespMsgType.TypeCmdChallengeResponse)
    command.cmdChallengeResponsePayload.payload = challenge.encode()
    response = pb.RMakerChRespPayload(msg=pb.RMakerChRespMsgType.TypeRespChallengeResponse)
    response.respChallengeResponsePayload.payload = signature
    response.respChallengeResponsePayload.node_id = "A0B1C2D3E4F5"
    for value in (f"{d:064x}", public.hex(), challenge, hashlib.sha256(challenge.encode()).hexdigest(),
                  signature.hex()):
        assert f"`{value}`" in section, value
    assert command.SerializeToString() == bytes.fromhex("52420a40") + challenge.encode()
    wire = response.SerializeToString().hex()
    assert wire == "08015a570a47" + signature.hex() + "120c413042314332443345344635"
    _, s = utils.decode_dss_signature(signature)
    assert s > P256_ORDER // 2  # "its S is high"
    assert signature_verifies(key.public_key(), challenge.encode(), signature)
    for status, name in ((2, "InvalidParam"), (3, "Disabled")):
        assert pb.RMakerChRespPayload(msg=1, status=status).SerializeToString().hex() in section
