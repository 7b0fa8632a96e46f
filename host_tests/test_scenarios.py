"""The seed's user-node mapping scenarios, end to end: virtual board running the firmware, real
mosquitto with mutual TLS, the local cloud, and our client (shared/seeds/user-node-mapping.txt)."""

import uuid

from rmkit.flow import map_node, provision_node


def test_client_first_then_node_requested_then_confirmed(bench):
    """Seed steps 1, 2, 3, 4 in order: the cloud says `requested` until the node's publish arrives."""
    bench.add_user("alice@example.com")
    alice = bench.login("alice@example.com")
    board = bench.add_board("vb-s1")
    secret_key = str(uuid.uuid4())
    bench.stack.broker.pause()  # the node cannot reach the broker until the client's request is in
    try:
        node_id = provision_node(bench.provisioner(board), bench.timeline, alice.user_id, secret_key,
                                 bench.ssid, bench.passphrase)
        request_id = alice.request_mapping(node_id, secret_key)
        assert alice.mapping_status(request_id) == "requested"
    finally:
        bench.stack.broker.resume()
    outcome = alice.wait_for_mapping(request_id, poll_interval_s=0.1)
    assert outcome.status == "confirmed"
    assert alice.nodes() == [node_id]
    assert node_id == board.node_id
