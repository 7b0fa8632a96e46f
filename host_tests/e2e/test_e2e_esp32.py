"""End to end, what a real ESP32 makes the node do that a kinder board would not: set its clock by SNTP
before TLS (and wait for a time server that is not there yet), survive a TLS session that does not
fit its internal RAM, and come back from a hang through its task watchdog. Virtual board running the
firmware, mosquitto with mutual TLS, the local cloud."""

import json
import re
import uuid

from rmkit.flow import provision_node
from rmkit.sntp import SntpServer

LARGEST_BLOCK = r"mqtt: largest free internal RAM block for TLS: (\d+) bytes"
TLS_IN_BUFFER = 16717  # mbedtls's input record buffer on an ESP32: one block (mbedtls ssl_misc.h)
# ESP-IDF's task watchdog panic for MicroPython's watchdog user, then the chip's restart (rmkit.vboard.supervisor)
WATCHDOG_RESET = (r"task_wdt: Task watchdog got triggered\. The following tasks/users did not reset the watchdog in "
                  r"time:\r\n[^\n]* - mpy_machine_wdt \(CPU 0/1\)\r\n[^\n]*Aborting\.\r\nRebooting\.\.\.\r\n"
                  r"rst:0xc \(SW_CPU_RESET\)")
SNTP_FAILED = r"clock: time not set by SNTP 127\.0\.0\.1:%d: ClockError\(no SNTP answer within \d+ ms\); " \
              r"no TLS until it is; retry in \d+ ms"


def test_node_without_a_time_server_keeps_asking_and_maps_once_time_is_served(rig):
    rig.add_user("alice@example.com")
    alice = rig.login("alice@example.com")
    sntp_port = rig.stack.sntp.port
    rig.stack.sntp.stop()  # nobody answers on that port until the end of the test
    board = rig.add_board("vb-clock")
    secret_key = str(uuid.uuid4())
    node_id = provision_node(rig.provisioner(board), rig.timeline, alice.user_id, secret_key,
                             rig.ssid, rig.passphrase)
    request_id = alice.request_mapping(node_id, secret_key)
    rebooted = board.wait_for_log(r"node: provisioned; rebooting into station mode", timeout=20)
    first = board.wait_for_log(SNTP_FAILED % sntp_port, since=rebooted.end(), timeout=20)
    board.wait_for_log(SNTP_FAILED % sntp_port, since=first.end(), timeout=20)  # and again, later
    assert "mqtt: connecting" not in board.read_log(rebooted.end())  # no TLS on a clock from 2000
    assert alice.mapping_status(request_id) == "requested"

    rig.stack.sntp = SntpServer(port=sntp_port).start()
    board.wait_for_log(r"clock: time set by SNTP from 127\.0\.0\.1:%d: 20\d\d-" % sntp_port,
                       since=rebooted.end(), timeout=30)
    assert alice.wait_for_mapping(request_id, poll_interval_s=0.1, give_up_s=20).status == "confirmed"


def test_tls_that_does_not_fit_internal_ram_fails_is_retried_and_maps_once_it_fits(rig):
    rig.add_user("bob@example.com")
    bob = rig.login("bob@example.com")
    sntp_port = rig.stack.sntp.port
    rig.stack.sntp.stop()  # the online node waits for the time before any TLS: RAM is taken meanwhile
    board = rig.add_board("vb-ram")
    secret_key = str(uuid.uuid4())
    node_id = provision_node(rig.provisioner(board), rig.timeline, bob.user_id, secret_key,
                             rig.ssid, rig.passphrase)
    request_id = bob.request_mapping(node_id, secret_key)
    rebooted = board.wait_for_log(r"node: provisioned; rebooting into station mode", timeout=20)
    waiting = board.wait_for_log(SNTP_FAILED % sntp_port, since=rebooted.end(), timeout=20)
    # what else ESP-IDF might hold: 100 KB out of its largest block leave no block for a session's
    # 16.7 KB input buffer, though more than that is free in pieces
    board.take_internal_ram(100_000)
    rig.stack.sntp = SntpServer(port=sntp_port).start()
    low = board.wait_for_log(LARGEST_BLOCK, since=waiting.end(), timeout=30)
    assert int(low.group(1)) < TLS_IN_BUFFER
    failed = board.wait_for_log(r"mqtt: connect failed: OSError\(\[Errno 12\] ENOMEM\); retry in \d+ ms",
                                since=low.end(), timeout=20)
    assert bob.mapping_status(request_id) == "requested"
    assert board.running and board.crashes == []

    board.take_internal_ram(0)
    fits = board.wait_for_log(LARGEST_BLOCK, since=failed.end(), timeout=30)
    assert int(fits.group(1)) > TLS_IN_BUFFER
    assert bob.wait_for_mapping(request_id, poll_interval_s=0.1, give_up_s=30).status == "confirmed"
    assert re.search(r"mqtt: connected in \d+ ms", board.read_log(fits.end()))


def test_a_wifi_driver_call_that_never_returns_is_ended_by_the_watchdog_and_the_mapping_still_confirms(rig_factory):
    """The node is online with its mapping pending (the broker is away). Its board resets, and at boot the
    Wi-Fi driver wedges: WLAN.connect() never returns (the air's connect_block_s), so the event loop stops and
    nothing feeds the watchdog. It resets the board as an ESP32's does; the driver works again after that, and
    the node comes back with the mapping it kept on flash and publishes it."""
    # the request stays open through the 30 s watchdog, a reboot and the cloud's reconnect to the broker
    rig = rig_factory(mapping_timeout=300)
    rig.add_user("carol@example.com")
    carol = rig.login("carol@example.com")
    rig.stack.broker.stop()
    board = rig.add_board("vb-wdt")
    secret_key = str(uuid.uuid4())
    node_id = provision_node(rig.provisioner(board), rig.timeline, carol.user_id, secret_key,
                             rig.ssid, rig.passphrase)
    request_id = carol.request_mapping(node_id, secret_key)
    board.wait_for_log(r"mqtt: connect failed", timeout=30)  # online, nobody to publish to
    air = json.loads(rig.stack.air_path.read_text())
    tmp = rig.stack.air_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(air, connect_block_s=3600)))
    tmp.replace(rig.stack.air_path)

    since = board.log_offset()
    board.reset()
    wedged = board.wait_for_log(r"vb_network: WLAN.connect\(\) wedged", since=since, timeout=20)
    rig.stack.write_air()  # the wedged call read the fault already; the driver answers again after the reset
    rig.stack.broker.start()  # the cloud reconnects meanwhile; the wedged node cannot publish
    reset = board.wait_for_log(WATCHDOG_RESET, since=wedged.end(), timeout=60)  # 30 s, and a little
    assert board.watchdog_resets == 1 and board.crashes == []
    state = json.loads((board.flash_dir / "state.json").read_text())
    assert state["pending_mapping"]["secret_key"] == secret_key and state["wifi"]["ssid"] == rig.ssid
    assert carol.mapping_status(request_id) == "requested"  # the wedged node published nothing

    board.wait_for_log(r"board: watchdog on, 30000 ms \(this boot follows a watchdog reset\)", since=reset.end(),
                       timeout=20)
    assert carol.wait_for_mapping(request_id, poll_interval_s=0.2, give_up_s=90).status == "confirmed"
    board.wait_for_log(rf"mapping: mapping for user {carol.user_id} acknowledged", since=reset.end(), timeout=30)
