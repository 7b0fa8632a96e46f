"""The end-to-end mapping scenarios on a board, through its serial port and the network only
(hardware in the loop: `pytest host_tests/hil --board PORT ...`, README "Hardware in the loop").

Each test starts with the board reset into provisioning with nothing stored (the `hil` fixture); the
client is ours (rmkit.flow, rmkit.provision, the cloud API client), the broker, SNTP server and cloud the
harness's. host_tests/e2e/test_scenarios.py runs the same scenarios, and more, against virtual boards
it can reach into; these only do what can be done to a board on a desk.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest

from rmkit.flow import map_node
from support.mapping_status import poll_until_final

from support.hil import ONLINE_S

pytestmark = pytest.mark.hil

# the cloud's mapping timeout in the wrong-secret scenario (RainMaker: 60 s); the PUT comes right after
# the node's report, well inside it
SHORT_TIMEOUT_S = 3.0


def acked_line(user_id: str) -> str:
    """The node's log line once the broker's PUBACK for the user's mapping arrived."""
    return rf"mapping: mapping for user {re.escape(user_id)} acknowledged"


def test_client_first_then_node_confirmed(hil):
    """The client asks the cloud first (PUT with the node id the board's factory data holds), then
    provisions the board: `requested` until the node's publish arrives, then `confirmed`."""
    alice = hil.user("alice")
    secret_key = str(uuid.uuid4())
    request_id = alice.request_mapping(hil.node_id, secret_key)
    assert alice.mapping_status(request_id) == "requested"

    assert hil.provision(alice, secret_key) == hil.node_id
    outcome = alice.wait_for_mapping(request_id, poll_interval_s=0.2, give_up_s=ONLINE_S)
    assert outcome.status == "confirmed"
    assert alice.nodes() == [hil.node_id]
    hil.board.wait_for_log(acked_line(alice.user_id), timeout=ONLINE_S)


def test_node_first_then_client_confirmed(hil):
    """The node's publish is in before the client's PUT: the PUT itself is answered `confirmed`."""
    alice = hil.user("alice")
    secret_key = str(uuid.uuid4())
    since = hil.board.log_offset()
    node_id = hil.provision(alice, secret_key)
    assert node_id == hil.node_id
    hil.board.wait_for_log(acked_line(alice.user_id), timeout=ONLINE_S, since=since)
    hil.wait_for_cloud_log(rf"node {node_id} reported a mapping for user {alice.user_id}")

    request_id = alice.request_mapping(node_id, secret_key)
    assert alice.mapping_status(request_id) == "confirmed"
    assert alice.nodes() == [node_id]


def test_wrong_secret_stays_requested_then_times_out(hil):
    """The node was given key A, the cloud is asked with key B: the node's report does not match, the
    request stays `requested` and ends `timedout`, never `confirmed`."""
    alice = hil.user("alice")
    key_for_node, key_for_cloud = str(uuid.uuid4()), str(uuid.uuid4())
    node_id = hil.provision(alice, key_for_node)
    hil.board.wait_for_log(acked_line(alice.user_id), timeout=ONLINE_S)
    hil.wait_for_cloud_log(rf"node {node_id} reported a mapping for user {alice.user_id}")

    with hil.mapping_timeout(SHORT_TIMEOUT_S):
        before_put = time.monotonic()
        request_id = alice.request_mapping(node_id, key_for_cloud)
        statuses = poll_until_final(alice, request_id)
        waited = time.monotonic() - before_put

    assert statuses[-1] == "timedout"
    assert set(statuses[:-1]) == {"requested"}, statuses
    assert waited >= SHORT_TIMEOUT_S
    assert alice.nodes() == []


def test_factory_reset_from_the_repl_is_reported_and_reboots_into_provisioning(hil):
    """A mapped, online node reset from its REPL over the serial port: it reports the reset (the cloud
    drops the user's association), erases its state and reboots into provisioning."""
    alice = hil.user("alice")
    secret_key = str(uuid.uuid4())
    node_id = hil.provision(alice, secret_key)
    assert map_node(alice, hil.timeline, node_id, secret_key, poll_interval_s=0.2).status == "confirmed"
    hil.board.wait_for_log(r"online: config reported", timeout=ONLINE_S)
    assert alice.nodes() == [node_id]

    since = hil.factory_reset_from_repl()
    hil.board.wait_for_log(r"online: factory reset reported", timeout=ONLINE_S, since=since)
    hil.board.wait_for_log(r"node: factory reset done \(reported to the cloud\)", timeout=ONLINE_S, since=since)
    hil.wait_for_cloud_log(rf"node {node_id} reset: associations of 1 user\(s\) removed \({alice.user_id}\)")
    assert alice.nodes() == []

    hil.wait_for_provisioning(since)
    info = hil.provisioner().proto_ver()  # the provisioning service answers again
    assert info["prov"]["sec_ver"] == 1


# A module that boot.py imports: it starts a thread collecting garbage in a loop, so every provisioning
# request (the Security 1 handshake's X25519 above all) is served while collections keep coming from
# another thread. On an ESP32 a BLE IRQ handler that let other threads run while it waited (a sleep, a long
# print) would have its heap-held frames freed under it (docs/protocol.md 1.2); the node would then crash
# or corrupt its heap. It stops by itself after STORM_S and says so: nothing prints meanwhile (a line from
# the thread could land in the middle of a raw-REPL exchange), and the REPL is used only once it stopped.
STORM_S = 15
GC_STORM = """\
import _thread, gc, time
def _storm():
    n, t0 = 0, time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < %d:
        gc.collect()
        n += 1
        time.sleep_ms(1)
    print("gc storm: %%d collections" %% n)
_thread.start_new_thread(_storm, ())
print("gc storm: started")
""" % (STORM_S * 1000)


def test_provisioning_holds_while_the_board_collects_garbage_in_a_loop(hil):
    """gc.collect() in a loop on the board, in a thread of its own from boot on, while the client's requests are
    pending (Security 1 handshake, the user mapping, Wi-Fi config): the node answers every one, reboots into
    station mode and its mapping is confirmed, with no crash."""
    alice = hil.user("alice")
    secret_key = str(uuid.uuid4())
    original_boot = hil.board.exec("print(open('/boot.py').read(), end='')")
    hil.board.exec("with open('/gcstorm.py', 'w') as f:\n    f.write(%r)\n"
                   "with open('/boot.py', 'a') as f:\n    f.write('\\nimport gcstorm\\n')" % GC_STORM)
    try:
        since = hil.board.reset()
        hil.board.wait_for_log(r"gc storm: started", timeout=ONLINE_S, since=since)
        hil.wait_for_provisioning(since)

        node_id = hil.provision(alice, secret_key)
        assert node_id == hil.node_id
        rebooted = hil.board.wait_for_log(r"provisioned; rebooting", timeout=ONLINE_S, since=since)
        assert map_node(alice, hil.timeline, node_id, secret_key, poll_interval_s=0.2).status == "confirmed"
        hil.board.wait_for_log(acked_line(alice.user_id), timeout=ONLINE_S, since=since)
        assert "gc storm: started" in hil.board.read_log(since + rebooted.end())  # storming in the online phase too
        done = hil.board.wait_for_log(r"gc storm: (\d+) collections", timeout=STORM_S + ONLINE_S,
                                      since=since + rebooted.end())
        assert int(done.group(1)) > 100, done.group(0)  # it kept collecting all along
        log = hil.board.read_log(since)
        assert "Traceback" not in log and "Guru Meditation" not in log, log[-2000:]
    finally:
        hil.board.exec("import os\nwith open('/boot.py', 'w') as f:\n    f.write(%r)\nos.remove('/gcstorm.py')"
                       % original_boot)
