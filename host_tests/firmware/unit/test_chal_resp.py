"""The ch_resp endpoint (docs/protocol.md 7.1) through protocomm with a Security 1 session: a cloud's challenge is
signed with the node's key (RFC 6979's P-256 key: the signature is known in advance), anything else is refused
with InvalidParam (not a signing oracle for TLS handshakes), disable lasts until the next boot, the node id on
get-node-id; proto-ver advertises the capability; cloud_user_assoc is served or not as the setting says.
Signatures verified by `cryptography`: host_tests/firmware/test_fw_chal_resp.py."""

import json

from rmnode import chal_resp, p256, pb, protocomm
from rmnode.p256_key import KeyUnusable, load_key
from rmnode.prov_endpoints import Provisioning
from fwtest import HERE, FakeConfig, FakeStation, check, equal, raises, sec1_session, secured, tmpdir

h = bytes.fromhex
RFC_KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721  # RFC 6979 A.2.5
RFC_SAMPLE_R = "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716"
RFC_SAMPLE_S = "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8"
SUCCESS, INVALID_PARAM, DISABLED = 0, 2, 3


def _prov(secret_mapping=False):
    endpoint = chal_resp.ChallengeResponse("node-1", RFC_KEY)
    prov = Provisioning(FakeConfig(), FakeStation(), lambda user_id, secret_key: None, chal_resp=endpoint,
                        secret_mapping=secret_mapping)
    return prov, endpoint


def _session(prov, session_id=7):
    return sec1_session(prov.dispatch, session_id, b"abcd1234")


def _ask(prov, client, request, session_id=7):
    return secured(prov.dispatch, client, session_id, "ch_resp", pb.RMakerChRespPayload, request)


def _challenge(payload):
    return {"cmdChallengeResponsePayload": {"payload": payload}}


def test_a_cloud_challenge_is_signed_with_the_node_key():
    prov, _ = _prov()
    client = _session(prov)
    resp = _ask(prov, client, _challenge(b"sample"))
    equal((resp["msg"], resp["status"]), (1, SUCCESS), "RespChallengeResponse, Success")
    equal(resp["respChallengeResponsePayload"]["node_id"], "node-1", "the node id")
    equal(resp["respChallengeResponsePayload"]["payload"],
          p256.der_signature(int(RFC_SAMPLE_R, 16), int(RFC_SAMPLE_S, 16)), "RFC 6979's signature of 'sample', DER")


def test_the_request_esp_rainmaker_cli_sends():
    # esp-rainmaker-cli 1.14.1: msg and status left at 0 (omitted), the challenge's UTF-8 bytes
    prov, _ = _prov()
    client = _session(prov)
    raw = pb.decode(pb.RMakerChRespPayload, client.crypt(prov.dispatch(7, "ch_resp", client.crypt(
        h("520a0a0873616d706c652d31")))))
    equal(raw["status"], SUCCESS, "signed")
    check(len(raw["respChallengeResponsePayload"]["payload"]) in range(68, 73), "a DER P-256 signature")


def test_what_a_cloud_would_not_issue_is_invalid_param():
    prov, endpoint = _prov()
    client = _session(prov)
    tls13_context = b" " * 64 + b"TLS 1.3, client CertificateVerify" + b"\x00" + bytes(range(32))
    tls12_transcript = h("16030100c4010000c00303") + bytes(range(32)) + b"\x00\x00\x04\xc0\x2b\x00\xff"
    for bad, why in ((b"", "empty"), (b"x" * 257, "257 bytes"), (b"two words", "a space"), (b"nul\x00", "a zero byte"),
                     (b"tab\there", "a tab"), ("é".encode(), "not ASCII"), (tls13_context, "a TLS 1.3 signed context"),
                     (tls12_transcript, "a TLS 1.2 handshake transcript")):
        resp = _ask(prov, client, _challenge(bad))
        equal((resp["msg"], resp["status"], resp["respChallengeResponsePayload"]), (1, INVALID_PARAM, None), why)
    equal(_ask(prov, client, {"msg": 0})["status"], INVALID_PARAM, "no challenge at all")
    equal(_ask(prov, client, _challenge(b"!" * 256))["status"], SUCCESS, "256 printable bytes: the longest")
    check(not endpoint.disabled, "still enabled")


def test_disable_lasts_for_every_later_request_and_session():
    prov, endpoint = _prov()
    client = _session(prov)
    equal(_ask(prov, client, {"msg": 4}), {"msg": 5, "status": SUCCESS, "cmdChallengeResponsePayload": None,
                                          "respChallengeResponsePayload": None, "cmdGetNodeIDPayload": None,
                                          "respGetNodeIDPayload": None, "cmdDisableChalRespPayload": None,
                                          "respDisableChalRespPayload": None}, "RespDisableChalResp, Success")
    check(endpoint.disabled, "disabled")
    for request in (_challenge(b"sample"), {"msg": 4}, {"msg": 2}):
        resp = _ask(prov, client, request)
        equal((resp["msg"], resp["status"]), (1, DISABLED), "Disabled for %r" % (request,))
    raw = client.crypt(prov.dispatch(7, "ch_resp", client.crypt(b"\xff\xff")))
    equal(raw, h("08011003"), "even undecodable bytes get Disabled, as upstream")
    other = _session(prov, 8)  # a new client: the node keeps one session (docs/protocol.md 1.1)
    equal(_ask(prov, other, _challenge(b"sample"), 8)["status"], DISABLED, "in a new session too")


def test_get_node_id():
    prov, _ = _prov()
    client = _session(prov)
    resp = _ask(prov, client, {"msg": 2})
    equal((resp["msg"], resp["status"], resp["respGetNodeIDPayload"]), (3, SUCCESS, {"node_id": "node-1"}), "node id")


def test_an_unknown_message_type_kills_the_session():
    prov, _ = _prov()
    client = _session(prov)
    raises(protocomm.BadRequest, prov.dispatch, 7, "ch_resp", client.crypt(h("0809")))
    raises(protocomm.SessionError, prov.dispatch, 7, "ch_resp", client.crypt(h("0802")))


def test_proto_ver_advertises_ch_resp_first():
    prov, _ = _prov()
    reply = prov.dispatch(1, "proto-ver", b"---")
    check(reply.startswith(b'{"rmaker_extra":{"ver":"1.0","cap":["ch_resp"]},"prov":'), reply)
    equal(json.loads(reply)["prov"]["sec_ver"], 1, "prov as before")
    plain, _ = Provisioning(FakeConfig(), FakeStation(), lambda u, s: None), None
    equal(json.loads(plain.dispatch(1, "proto-ver", b"---")), {"prov": {"ver": "v1.1", "sec_ver": 1,
                                                                       "cap": ["wifi_scan"]}}, "secret only: unchanged")


def test_which_mapping_endpoints_are_served():
    only, _ = _prov(secret_mapping=False)
    check("ch_resp" in only.endpoints and "cloud_user_assoc" not in only.endpoints, only.endpoints)
    client = _session(only)
    raises(protocomm.UnknownEndpoint, only.dispatch, 7, "cloud_user_assoc", client.crypt(b"\x08\x00"))
    both, _ = _prov(secret_mapping=True)
    check("ch_resp" in both.endpoints and "cloud_user_assoc" in both.endpoints, both.endpoints)


def test_the_key_is_read_from_the_factory_der_file():
    for name in ("p256_pkcs8", "p256_sec1"):
        der = _der(name)
        path = tmpdir("chal_resp") + "/" + name + ".der"
        with open(path, "wb") as f:
            f.write(der)
        equal(load_key(path), RFC_KEY, name)


def test_an_unusable_key_says_why_without_the_key():
    path = tmpdir("chal_resp") + "/p384.der"
    with open(path, "wb") as f:
        f.write(_der("p384_pkcs8"))
    e = raises(KeyUnusable, load_key, path)
    check("P-384" in str(e) and "c9afa9" not in str(e).lower(), str(e))
    check("not readable" in str(raises(KeyUnusable, load_key, path + ".missing")), "missing")
    check("no key" in str(raises(KeyUnusable, load_key, None)), "none configured")


def _der(name):
    with open(HERE + "/p256_keys.txt") as f:
        for line in f:
            if line.startswith(name + " "):
                return h(line.split()[1])
    raise KeyError(name)
