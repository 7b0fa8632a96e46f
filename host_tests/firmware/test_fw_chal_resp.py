"""The node's ch_resp endpoint (rmnode.chal_resp, docs/protocol.md 7.1) as the cloud sees it: challenges of the
cloud's form, relayed through a Security 1 session as esp-rainmaker-cli relays them (the host's protobuf and
AES), are signed with the key `rmkit pki` wrote for the node, and the node certificate's public key verifies
every signature (what the cloud's .../mapping/verify checks)."""

from __future__ import annotations

import random
import string
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from rmkit.pki import Pki
from rmkit.proto import pb as host_pb
from rmnode import chal_resp
from rmnode.p256_key import load_key
from rmnode.prov_endpoints import Provisioning
from fwtest import FakeConfig, FakeStation, sec1_session

PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


def test_200_random_challenges_signed_by_the_node_verify_with_its_certificate(tmp_path: Path):
    node = Pki(tmp_path / "pki").node_identity("A1B2C3D4E5F6")
    endpoint = chal_resp.ChallengeResponse("A1B2C3D4E5F6", load_key(str(node.key_der)))
    prov = Provisioning(FakeConfig(node_id="A1B2C3D4E5F6"), FakeStation(), lambda u, s: None, chal_resp=endpoint,
                        secret_mapping=False)
    client = sec1_session(prov.dispatch, 7, b"abcd1234")
    public_key = node.certificate().public_key()
    rng = random.Random(2025)
    for i in range(200):
        size = (1, 64, 256, None)[i % 4] or rng.randrange(1, 257)
        challenge = "".join(rng.choice(PRINTABLE) for _ in range(size))
        request = host_pb.RMakerChRespPayload()
        request.cmdChallengeResponsePayload.payload = challenge.encode("utf-8")
        reply = host_pb.RMakerChRespPayload()
        reply.ParseFromString(client.crypt(prov.dispatch(7, "ch_resp", client.crypt(request.SerializeToString()))))
        assert (reply.msg, reply.status) == (host_pb.RMakerChRespMsgType.TypeRespChallengeResponse,
                                             host_pb.RMakerChRespStatus.Success), challenge
        assert reply.respChallengeResponsePayload.node_id == "A1B2C3D4E5F6"
        public_key.verify(reply.respChallengeResponsePayload.payload, challenge.encode(), ec.ECDSA(hashes.SHA256()))


def test_the_cloud_challenges_fit_the_node_bound():
    # what the local cloud issues (tools/rmkit/cloud) must be signable: printable ASCII without spaces, <= 256
    for text in (string.ascii_letters + string.digits + "-_", "x" * 256):
        assert chal_resp.valid_challenge(text.encode())
