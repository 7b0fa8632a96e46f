"""Challenge-response user-node mapping end to end (docs/protocol.md 7.1): a virtual board running the firmware, the
local cloud with the PKI that issued the node's certificate, mosquitto, and our client. Over SoftAP and BLE, with
Security 0 and 1, the node signs the cloud's challenge and the cloud maps the user before the Wi-Fi credentials are
even sent; the node then goes online with nothing to publish. The secret-key flow still confirms when the node's
setting offers only that, and alongside challenge-response (the default) when a client asks for it."""

import json
import uuid

import pytest

from rmkit.flow import map_node, provision_node, provision_node_by_challenge
from rmkit.provision.errors import ProvisionError


def _state(board) -> dict:
    path = board.flash_dir / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize("transport, sec", [("softap", 0), ("softap", 1), ("ble", 0), ("ble", 1)],
                         ids=["softap-sec0", "softap-sec1", "ble-sec0", "ble-sec1"])
def test_the_node_signs_the_challenge_and_the_cloud_maps_the_user(rig, transport, sec):
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    board = rig.add_board("vb-ch", transport=transport, sec_ver=sec, pop=None if sec else "")
    provisioner = rig.provisioner(board, sec=sec)
    info = provisioner.proto_ver()
    assert info["rmaker_extra"] == {"ver": "1.0", "cap": ["ch_resp"]}  # what switches clients to this flow

    node_id, request_id = provision_node_by_challenge(provisioner, rig.timeline, alice, rig.ssid, rig.passphrase)
    assert node_id == board.node_id
    assert alice.mapping_status(request_id) == "confirmed"
    assert alice.nodes() == [node_id]
    board.wait_for_log(r"ch_resp: challenge of 64 bytes signed", timeout=10)

    # online with nothing to publish: the mapping never touched the node's flash (upstream publishes nothing either)
    board.wait_for_log(r"online: config reported", timeout=60)
    assert "pending_mapping" not in _state(board)
    assert "user/mapping" not in board.read_log()


def test_a_node_whose_setting_is_secret_is_mapped_by_the_secret_key_flow(rig):
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    board = rig.add_board("vb-secret", user_mapping="secret")
    provisioner = rig.provisioner(board)
    assert "rmaker_extra" not in provisioner.proto_ver()  # clients take the secret-key flow
    with pytest.raises(ProvisionError, match="ch_resp"):
        provisioner.start_session()
        provisioner.sign_challenge("q3Vd0Wk7hT2bXcNf9LmZsY8rAe1GuJpO")  # the node serves no ch_resp

    provisioner = rig.provisioner(board)
    secret_key = str(uuid.uuid4())
    node_id = provision_node(provisioner, rig.timeline, alice.user_id, secret_key, rig.ssid, rig.passphrase)
    assert map_node(alice, rig.timeline, node_id, secret_key, poll_interval_s=0.1).status == "confirmed"
    board.wait_for_log(rf"mapping: mapping for user {alice.user_id} acknowledged", timeout=30)


def test_a_node_offering_only_challenge_response_refuses_the_secret_key(rig):
    board = rig.add_board("vb-chonly", user_mapping="ch_resp")
    provisioner = rig.provisioner(board)
    assert provisioner.proto_ver()["rmaker_extra"]["cap"] == ["ch_resp"]
    provisioner.start_session()
    with pytest.raises(ProvisionError):
        provisioner.set_user_mapping("user-1", str(uuid.uuid4()))  # no cloud_user_assoc, as upstream
    assert "pending_mapping" not in _state(board)
