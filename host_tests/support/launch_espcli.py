"""Run Espressif's esp-rainmaker-cli with two narrow stand-ins (run with .venv-espcli's python).

1. The device step of `provision` (`provision_device`: SoftAP provisioning of a real board) is replaced
   by a stand-in that does what a node's cloud_user_assoc handler does with what it receives: it writes
   {node_id, user_id, secret_key} to $RMKIT_DEVICE_OUT so the test can publish the node's mapping over
   MQTT, waits for the file $RMKIT_DEVICE_GO (if that variable is set), then returns the node id as the
   device would. Everything the CLI does with the cloud stays its own code: reading `custom:user_id`
   from the profile's id token, making the secret key, `PUT user/nodes/mapping`, polling
   `GET user/nodes/mapping?&request_id=` every 5 s and printing the result (docs/protocol.md 6).
   With RMKIT_NODE_KEY (a node's private key, PEM) the stand-in is a node that offers challenge-response
   instead (docs/protocol.md 7.1): the CLI's own `perform_challenge_response_flow` runs, with the CLI's
   protobuf classes, its initiate and verify calls and its hex, against a node that answers `ch_resp` by
   signing SHA-256 of the challenge with that key (in plaintext: Security 0). Then it returns what
   `provision_device` returns after a challenge-response mapping, so the CLI neither PUTs nor polls.
2. With RMKIT_SKIP_LOGIN_PAUSE=1, the fixed 3 s `time.sleep` in `login` (rmaker_cmd/user.py) is skipped
   (only in that module; the provisioning poll keeps its real 5 s interval).

Usage: python launch_espcli.py provision --pop abcd1234 --ssid S --passphrase P --no-retry
"""

import json
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # host_tests/, for support.wait
from support.wait import wait_until  # noqa: E402

import rmaker_cmd.provision as provision_cmd
import rmaker_cmd.user as user_cmd
from rainmaker.rainmaker import main


def stand_in_device(transport_mode, pop, userid, secretkey, **_kwargs):
    node_id = os.environ["RMKIT_NODE_ID"]
    out = os.environ["RMKIT_DEVICE_OUT"]
    with open(out + ".tmp", "w") as f:
        json.dump({"node_id": node_id, "user_id": userid, "secret_key": secretkey}, f)
    os.replace(out + ".tmp", out)
    go = os.environ.get("RMKIT_DEVICE_GO")
    if go:
        try:
            wait_until(lambda: os.path.exists(go), 30, what="the stand-in device's go signal")
        except AssertionError as exc:
            print(f"stand-in device: {exc}", file=sys.stderr)
            return None
    return node_id, False  # (node_id, challenge_response_performed), as provision_device returns


class PlaintextSecurity:
    """Security 0 as the CLI's Security classes look to challenge_response: data passes unchanged."""

    def encrypt_data(self, data):
        return data

    def decrypt_data(self, data):
        return data


class SigningNode:
    """The node's ch_resp endpoint, as a CLI transport (send_data takes and returns latin-1 text)."""

    def __init__(self, node_id, key_pem_path):
        from cryptography.hazmat.primitives import serialization

        with open(key_pem_path, "rb") as f:
            self.key = serialization.load_pem_private_key(f.read(), password=None)
        self.node_id = node_id

    def send_data(self, endpoint, data):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from rmaker_tools.rmaker_prov.challenge_response import esp_rmaker_chal_resp_pb2 as chal_resp

        assert endpoint == "ch_resp", endpoint
        request = chal_resp.RMakerChRespPayload.FromString(data.encode("latin-1"))
        challenge = request.cmdChallengeResponsePayload.payload
        response = chal_resp.RMakerChRespPayload(msg=chal_resp.TypeRespChallengeResponse)
        response.respChallengeResponsePayload.payload = self.key.sign(challenge, ec.ECDSA(hashes.SHA256()))
        response.respChallengeResponsePayload.node_id = self.node_id
        return response.SerializeToString().decode("latin-1")


def stand_in_ch_resp_device(transport_mode, pop, userid, secretkey, session=None, tags=None, metadata=None,
                            **_kwargs):
    from rmaker_tools.rmaker_prov import challenge_response

    node = SigningNode(os.environ["RMKIT_NODE_ID"], os.environ["RMKIT_NODE_KEY"])
    ok, node_id = challenge_response.perform_challenge_response_flow(node, PlaintextSecurity(), session,
                                                                     tags=tags, metadata=metadata)
    if not ok:
        print("Challenge-response user-node association failed")
        return None
    print(f"✅ Node {node_id} added to your account successfully!")  # what provision_device prints
    return node_id, True


if os.environ.get("RMKIT_NODE_KEY"):
    provision_cmd.provision_device = stand_in_ch_resp_device
elif os.environ.get("RMKIT_NODE_ID"):
    provision_cmd.provision_device = stand_in_device  # looked up on the module at call time
if os.environ.get("RMKIT_SKIP_LOGIN_PAUSE") == "1":
    user_cmd.time = types.SimpleNamespace(**{**vars(time), "sleep": lambda _s: None})

if __name__ == "__main__":
    sys.argv[0] = "esp-rainmaker-cli"
    sys.exit(main())
