"""The whole mapping flow with the board computing at an ESP32's speed (rmkit.vboard.cpu: a Security 1 handshake,
X25519 twice, takes seconds; a P-256 signature a good part of one; the TLS handshake too), within the node's own
timeouts, our client's and the cloud's: over BLE with Security 1 by challenge-response (the handshake and the
signature computed inside the BLE IRQ handler, as on a board), and over SoftAP by the secret-key flow. `make demo
CPU=esp32` (host_tests/e2e/test_demo.py) covers SoftAP with challenge-response, and Espressif's CLI at ESP32 speed
is in host_tests/e2e/test_e2e_espressif.py."""

import re
import uuid

from rmkit.flow import map_node, provision_node, provision_node_by_challenge


def _seconds(board, pattern: str) -> float:
    """The uptime (s) the board's log line matching `pattern` carries."""
    return int(re.search(r"[IWE] \((\d+)\) " + pattern, board.read_log()).group(1)) / 1000


def test_over_ble_with_security_1_the_node_signs_at_esp32_speed_and_is_mapped(rig, esp32_speed):
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    board = rig.add_board("vb-slow-ble", transport="ble", **esp32_speed)
    provisioner = rig.provisioner(board)
    node_id, request_id = provision_node_by_challenge(provisioner, rig.timeline, alice, rig.ssid, rig.passphrase)
    assert (node_id, alice.mapping_status(request_id), alice.nodes()) == (board.node_id, "confirmed", [node_id])
    board.wait_for_log(r"online: config reported", timeout=120)
    # it did compute at a board's pace: the session's two X25519 alone take a good part of a second there
    connected, signed = _seconds(board, r"ble: central connected"), _seconds(board, r"ch_resp: challenge of \d+ bytes")
    assert signed - connected > 0.5, (connected, signed)


def test_over_softap_the_secret_key_flow_confirms_at_esp32_speed(rig, esp32_speed):
    rig.add_user("bob@example.com")
    bob = rig.login("bob@example.com")
    board = rig.add_board("vb-slow-ap", **esp32_speed)
    secret_key = str(uuid.uuid4())
    node_id = provision_node(rig.provisioner(board), rig.timeline, bob.user_id, secret_key, rig.ssid, rig.passphrase)
    assert map_node(bob, rig.timeline, node_id, secret_key, poll_interval_s=0.5).status == "confirmed"
    board.wait_for_log(rf"mapping: mapping for user {bob.user_id} acknowledged", timeout=120)
