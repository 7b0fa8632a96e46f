"""Provisioning over BLE against the firmware on a virtual board (docs/protocol.md 1.2): the GATT layout
Espressif's clients expect, a Security 1 session and a Wi-Fi scan result longer than the MTU, and
a central that misbehaves. Every misbehaving central costs only itself (an ATT error or its
connection) and one log line; the node keeps advertising, serves the next central, and loses
nothing it had stored. A client killed in the middle of a session frees the node at its link's
supervision timeout, as a board's controller would.

One board serves the whole module (each test leaves it advertising, in provisioning); the secret-key flow's
scenarios over BLE are in test_scenarios.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import uuid

import pytest

from rmkit.provision.ble import BumbleTransport
from rmkit.provision.client import Provisioner
from rmkit.stack import Stack
from rmkit.vboard.ble_central import BleCentral
from support.log_wait import wait_for_log_line
from support.paths import VENV_BIN

SERVICE = "021a9004-0382-4aea-bff4-6b3f1c5adfb4"
ENDPOINTS = {"prov-ctrl": "ff4f", "prov-scan": "ff50", "prov-session": "ff51", "prov-config": "ff52",
             "proto-ver": "ff53", "ch_resp": "ff54", "cloud_user_assoc": "ff55"}
NEIGHBOURS = 9
IDLE_S = 3  # the board's ble_idle_s: a central silent this long is dropped
# ATT error codes (Bluetooth Core, Vol 3 Part F 3.4.1.1)
ATT_READ_NOT_PERMITTED = 0x02
ATT_WRITE_NOT_PERMITTED = 0x03
ATT_INVALID_PDU = 0x04
ATT_INVALID_ATTRIBUTE_VALUE_LENGTH = 0x0D
CONNECTION_TIMEOUT = 0x08  # HCI error code (Bluetooth Core, Vol 1, Part F, 2.8)
# From a killed client's SIGINT to the node advertising again, beyond the link's supervision timeout: the
# client's exit, the radio's HCI, the node's IRQ handler (it advertises from there), on a loaded machine
ADVERTISING_AGAIN_ALLOWANCE_S = 2.0
RMKIT = str(VENV_BIN / "rmkit")


def uuid_of(endpoint: str) -> str:
    return SERVICE[:4] + ENDPOINTS[endpoint] + SERVICE[8:]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("ble-stack")) as started:
        # networks enough for one scan page longer than the negotiated MTU
        started.write_air([{"ssid": started.ssid, "password": started.passphrase, "rssi": -48, "channel": 6}]
                          + [{"ssid": f"neighbour-network-{i:02d}", "password": "x" * 12, "rssi": -60 - i,
                              "channel": 1 + i % 11} for i in range(NEIGHBOURS)])
        board = started.add_board("vb-ble", transport="ble", start=False)
        (board.flash_dir / "settings.json").write_text(json.dumps({"ble_idle_s": IDLE_S}))
        board.start()
        board.wait_for_log(r"state: provisioning \(service PROV_\w+, security 1, ble\)", timeout=30)
        yield started


@pytest.fixture
def board(stack, artifacts_dir):
    board = stack.boards["vb-ble"]
    since = board.log_offset()
    yield board
    (artifacts_dir / "vb-ble.log").write_text(board.read_log(since))
    # whatever the test did, the node is still provisioning, advertising and serving
    assert board.running
    assert "Traceback" not in board.read_log(since)
    # faults (what a BLE IRQ handler must not do) fail the test by themselves (support/fixtures_vboard.py)
    assert "vb_bluetooth: IRQ handler" not in board.read_log(since), "an IRQ handler ran past a central's patience"


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


async def connected(board, exchange_mtu: bool = True) -> BleCentral:
    central = BleCentral(board.ble_hci)
    await central.__aenter__()
    address, service = await central.find(board.service_name)
    assert service == SERVICE
    await central.connect(address, exchange_mtu=exchange_mtu)
    return central


async def read_proto_ver(central: BleCentral) -> dict:
    characteristic = central.characteristic(uuid_of("proto-ver"))
    await characteristic.write_value(b"---", with_response=True)
    return json.loads(bytes(await characteristic.read_value()))


async def att_error(awaitable) -> int:
    from bumble.att import ATT_Error

    with pytest.raises(ATT_Error) as raised:
        await awaitable
    return raised.value.error_code


def board_ssid(board) -> str:
    return json.loads(board.air.read_text())["aps"][0]["ssid"]


def served_next_central(board) -> dict:
    """A fresh central finds the node advertising and gets its proto-ver: the node serves on."""
    async def scenario():
        central = await connected(board)
        try:
            return await read_proto_ver(central)
        finally:
            await central.__aexit__()
    return run(scenario())


# -- what Espressif's clients rely on ------------------------------------------------------------------

def test_gatt_service_as_esp_idf_lays_it_out(board):
    """One service, advertised with the name in the scan response; one READ|WRITE characteristic per
    endpoint at the service UUID with bytes 12-13 replaced, each named by a 0x2901 descriptor, no 0x2902."""
    async def scenario():
        central = await connected(board)
        try:
            [service] = [s for s in central.peer.services if str(s.uuid).lower() == SERVICE]
            layout = {}
            for characteristic in service.characteristics:
                kinds = sorted(d.type.to_hex_str().upper() for d in characteristic.descriptors)
                assert kinds == ["2901"], kinds  # a user description, and no client configuration (0x2902)
                [description] = characteristic.descriptors
                layout[str(characteristic.uuid).lower()] = (bytes(await description.read_value()).decode(),
                                                           int(characteristic.properties))
            return layout, central.connection.att_mtu
        finally:
            await central.__aexit__()

    layout, mtu = run(scenario())
    assert layout == {uuid_of(name): (name, 0x02 | 0x08) for name in ENDPOINTS}
    assert mtu == 256  # what the node offers (firmware/rmnode/ble.py MTU); the central asked for 517


def test_security1_session_and_a_scan_result_longer_than_the_mtu(board):
    """Our client over the simulated radio: the Security 1 handshake, then a scan page of 10 networks,
    longer than the MTU, read as an ATT long read; the endpoint table came from the descriptors."""
    sizes = {}
    transport = BumbleTransport(board.service_name, board.ble_hci)
    send = transport.send

    def recording(endpoint, data):
        body = send(endpoint, data)
        sizes.setdefault(endpoint, []).append(len(body))
        return body

    transport.send = recording
    try:
        assert transport.endpoints == {name: uuid_of(name) for name in ENDPOINTS}
        client = Provisioner(transport, sec=1, pop=board.pop)
        assert client.proto_ver()["prov"]["sec_ver"] == 1
        client.start_session()
        networks = client.scan_wifi()
    finally:
        transport.close()
    assert len(networks) == 1 + NEIGHBOURS
    assert {n.ssid for n in networks} >= {board_ssid(board), f"neighbour-network-{NEIGHBOURS - 1:02d}"}
    assert max(sizes["prov-scan"]) > 256
    board.wait_for_log(r"ble: central disconnected \(session \d+\); advertising again")


def test_wrong_pop_is_an_att_error_and_the_node_serves_on(board):
    transport = BumbleTransport(board.service_name, board.ble_hci)
    try:
        from rmkit.provision.errors import HandshakeFailed, TransportError

        with pytest.raises((HandshakeFailed, TransportError), match="ATT error"):
            Provisioner(transport, sec=1, pop="not-the-pop").start_session()
    finally:
        transport.close()
    board.wait_for_log(r"protocomm: prov-session \(session \d+\): ")
    assert served_next_central(board)["prov"]["ver"] == "v1.1"


# -- a central that misbehaves -----------------------------------------------------------------------

def test_write_longer_than_the_attribute_buffer_is_refused(board):
    """600 bytes for a 512-byte attribute (ATT's largest value, and the node's buffer): the stack answers the
    long write with an ATT error and the node never sees it; the pending mapping stored before is still on
    flash, and a request that fits the buffer exactly is served."""
    transport = BumbleTransport(board.service_name, board.ble_hci)
    try:
        client = Provisioner(transport, sec=1, pop=board.pop)
        client.start_session()
        client.set_user_mapping("user-before-bad-input", str(uuid.uuid4()))
    finally:
        transport.close()
    state = board.flash_dir / "state.json"
    assert "user-before-bad-input" in state.read_text()

    async def scenario():
        central = await connected(board)
        try:
            version = central.characteristic(uuid_of("proto-ver"))
            code = await att_error(version.write_value(b"\x55" * 600, with_response=True))
            await version.write_value(b"\x55" * 512, with_response=True)  # the whole buffer: served
            return code, json.loads(bytes(await version.read_value()))
        finally:
            await central.__aexit__()

    since = board.log_offset()
    code, info = run(scenario())
    assert code == ATT_INVALID_ATTRIBUTE_VALUE_LENGTH
    assert info["prov"]["ver"] == "v1.1"
    assert "protocomm" not in board.read_log(since)
    assert "user-before-bad-input" in state.read_text()  # nothing stored was lost
    assert served_next_central(board)["prov"]["sec_ver"] == 1


def test_write_to_an_unknown_handle_is_an_att_error(board):
    async def scenario():
        central = await connected(board)
        try:
            code = await att_error(central.peer.gatt_client.write_value(0x0FFF, b"hello", with_response=True))
            return code, await read_proto_ver(central)  # the same central carries on
        finally:
            await central.__aexit__()

    code, info = run(scenario())
    assert code == 0x01  # Invalid Handle, from the stack: the node never sees it
    assert info["prov"]["ver"] == "v1.1"


def test_read_before_any_write_is_refused(board):
    async def scenario():
        central = await connected(board)
        try:
            code = await att_error(central.characteristic(uuid_of("prov-config")).read_value())
            return code, await read_proto_ver(central)
        finally:
            await central.__aexit__()

    code, info = run(scenario())
    assert code == ATT_READ_NOT_PERMITTED
    assert info["prov"]["ver"] == "v1.1"
    board.wait_for_log(r"ble: read of prov-config before any write refused")


def test_disconnect_in_the_middle_of_a_long_write(board):
    """Prepared writes queued, then the central goes away before executing them: nothing reaches protocomm."""
    from bumble import att

    async def scenario():
        central = await connected(board, exchange_mtu=False)
        handle = central.characteristic(uuid_of("prov-session")).handle
        for offset in (0, 18):
            response = await central.peer.gatt_client.send_request(att.ATT_Prepare_Write_Request(
                attribute_handle=handle, value_offset=offset, part_attribute_value=b"\x55" * 18))
            assert response.op_code == att.Opcode.ATT_PREPARE_WRITE_RESPONSE
        await central.__aexit__()  # no Execute Write

    since = board.log_offset()
    run(scenario())
    board.wait_for_log(r"ble: central disconnected \(session \d+\); advertising again", since=since)
    assert "protocomm" not in board.read_log(since)
    assert served_next_central(board)["prov"]["ver"] == "v1.1"


def test_second_central_waits_until_the_first_leaves(board):
    """One central at a time: while one is connected the node does not advertise, so a second one finds
    nothing; once the first leaves, the second is served."""
    async def scenario():
        first = await connected(board)

        async def keep_talking():  # so that the node's idle watch (IDLE_S) has no reason to drop the first
            while True:
                assert (await read_proto_ver(first))["prov"]["ver"] == "v1.1"  # the first is undisturbed
                await asyncio.sleep(0.3)

        talking = asyncio.create_task(keep_talking())
        second = BleCentral(board.ble_hci)
        await second.__aenter__()
        try:
            with pytest.raises(RuntimeError, match="no device"):
                await second.find(board.service_name, timeout=1.5)
            assert not talking.done()
            talking.cancel()
            await first.__aexit__()
            address, _ = await second.find(board.service_name)
            await second.connect(address)
            return await read_proto_ver(second)
        finally:
            await second.__aexit__()

    assert run(scenario())["prov"]["ver"] == "v1.1"


async def dropped_by_the_node(central: BleCentral) -> None:
    """Wait until the node drops the central's connection (its idle watch), then close the central."""
    disconnected = asyncio.Event()
    central.connection.on("disconnection", lambda reason: disconnected.set())
    try:
        await asyncio.wait_for(disconnected.wait(), IDLE_S + 5)
    finally:
        central.connection = None  # already gone
        await central.__aexit__()


def test_central_that_never_reads_its_response_is_dropped(board):
    async def scenario():
        central = await connected(board)
        await central.characteristic(uuid_of("proto-ver")).write_value(b"---", with_response=True)
        await dropped_by_the_node(central)

    since = board.log_offset()
    run(scenario())
    board.wait_for_log(rf"ble: central silent for {IDLE_S} s, its response unread \(session \d+\): disconnecting",
                       since=since)
    assert served_next_central(board)["prov"]["ver"] == "v1.1"


def test_silent_central_is_dropped(board):
    async def scenario():
        await dropped_by_the_node(await connected(board))

    since = board.log_offset()
    run(scenario())
    board.wait_for_log(rf"ble: central silent for {IDLE_S} s \(session \d+\): disconnecting", since=since)
    assert served_next_central(board)["prov"]["ver"] == "v1.1"


def test_power_cut_after_the_mapping_keeps_it_and_the_node_advertises_again(board):
    """The pending mapping is on flash the moment cloud_user_assoc answers: a power cut right after loses
    nothing, and the node comes back advertising."""
    transport = BumbleTransport(board.service_name, board.ble_hci)
    try:
        client = Provisioner(transport, sec=1, pop=board.pop)
        client.start_session()
        client.set_user_mapping("user-before-power-cut", str(uuid.uuid4()))
        since = board.log_offset()
        board.power_cut()
    finally:
        transport.close()
    board.wait_for_log(r"state: provisioning \(service PROV_\w+, security 1, ble\)", since=since, timeout=30)
    assert "user-before-power-cut" in (board.flash_dir / "state.json").read_text()
    assert served_next_central(board)["prov"]["ver"] == "v1.1"


def test_a_write_to_an_endpoint_name_is_refused_and_the_next_client_finds_every_endpoint(board):
    """The 0x2901 descriptors are read-only (FLAG_READ): a central's write is Write Not Permitted, as on
    NimBLE, so no central can rename an endpoint and make cloud_user_assoc unreachable for the next one."""
    async def scenario():
        central = await connected(board)
        try:
            [description] = central.characteristic(uuid_of("cloud_user_assoc")).descriptors
            return await att_error(central.peer.gatt_client.write_value(description.handle, b"X",
                                                                        with_response=True))
        finally:
            await central.__aexit__()

    assert run(scenario()) == ATT_WRITE_NOT_PERMITTED
    transport = BumbleTransport(board.service_name, board.ble_hci)
    try:
        assert transport.endpoints == {name: uuid_of(name) for name in ENDPOINTS}
        client = Provisioner(transport, sec=1, pop=board.pop)
        client.start_session()
        assert client.set_user_mapping("user-after-a-rename-attempt", str(uuid.uuid4()))
    finally:
        transport.close()


def provision_command(board, stack, user_id: str) -> list[str]:
    return [RMKIT, "provision", "--transport", "ble", "--device", board.service_name, "--hci", board.ble_hci,
            "--pop", board.pop, "--ssid", stack.ssid, "--passphrase", stack.passphrase, "--user-id", user_id]


def test_a_client_killed_mid_session_frees_the_node_at_the_supervision_timeout(stack):
    """`rmkit provision --transport ble` interrupted (SIGINT) once connected: its process ends without an LL
    disconnect, the board's link times out at the supervision timeout the client asked for (reason 0x08), the
    node advertises again, and a second client provisions it. A board of its own: it leaves provisioning."""
    board = stack.add_board("vb-ble-killed", transport="ble")
    board.wait_for_log(r"state: provisioning \(service PROV_\w+, security 1, ble\)", timeout=30)
    radio, since = board.radio, len(board.radio.events)
    client = subprocess.Popen(provision_command(board, stack, "user-of-a-killed-client"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        radio.wait_for_event(lambda e: e[0] == "connect", 30, since)  # the client is discovering the GATT
        client.send_signal(signal.SIGINT)
        signalled_at = time.monotonic()
        _, errors = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 130 and "rmkit provision: interrupted" in errors, errors
    lost = radio.wait_for_event(lambda e: e[0] == "lost", 10, since)
    dropped = radio.wait_for_event(lambda e: e[0] == "disconnect", lost[2] + 10, since)
    advertising = radio.wait_for_event(lambda e: e[0] == "advertise" and e.at >= dropped.at, 10, since)
    assert dropped[2] == CONNECTION_TIMEOUT
    assert dropped.at - lost.at >= lost[2]  # the board held the link for the whole supervision timeout
    assert advertising.at - signalled_at <= lost[2] + ADVERTISING_AGAIN_ALLOWANCE_S
    board.wait_for_log(r"ble: central disconnected \(session 1\); advertising again")

    second = subprocess.run(provision_command(board, stack, "user-of-the-second-client"), capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert f"node_id {board.node_id}" in second.stdout
    assert "Traceback" not in board.read_log()


def test_ctrl_c_on_a_sandbox_whose_central_vanished_prints_no_traceback(tmp_path):
    """A central gone without disconnecting (its link waiting out a 30 s supervision timeout), then Ctrl-C on
    `rmkit sandbox --transport ble`: the board's stack disconnects into the void and everything stops
    quietly (Bumble's link raised "Unable to find controller for address" with a traceback)."""
    env = dict(os.environ, RMKIT_RUNTIME_DIR=str(tmp_path / "run"))
    sandbox = subprocess.Popen([RMKIT, "sandbox", "--transport", "ble", "--workdir", str(tmp_path / "sb")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = ""
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops everything." not in out:
            line = sandbox.stdout.readline()
            assert line and time.monotonic() < deadline, f"the sandbox never got ready:\n{out}"
            out += line
        info = json.loads(out.split("SANDBOX ", 1)[1].splitlines()[0])

        async def vanish():
            central = BleCentral(info["ble_hci"])
            await central.__aenter__()
            address, _ = await central.find(info["ble_device"])
            await central.connect(address, supervision_timeout_ms=30000)
            await central.vanish()

        run(vanish())
        wait_for_log_line(tmp_path / "sb" / "vb-sandbox.log", r"ble: central connected", 10, what="the board")
        sandbox.send_signal(signal.SIGINT)
        rest, _ = sandbox.communicate(timeout=60)
    finally:
        if sandbox.poll() is None:
            sandbox.kill()
            sandbox.communicate()
    out += rest
    assert "sandbox: stopped" in out, out
    assert "Traceback" not in out and "Unable to find controller" not in out, out
