"""Our client against the firmware's provisioning service (rmnode.prov_endpoints + rmnode.http) running under the
MicroPython unix port (and once under CPython), over 127.0.0.1."""

import json
import statistics
import subprocess
import sys
import time

import pytest

from rmkit.provision import HandshakeFailed, HttpTransport, MappingRefused, Provisioner, WifiJoinFailed

POP = "abcd1234"


def client_for(node, **kwargs):
    transport = HttpTransport("127.0.0.1", node.port, timeout=10)
    kwargs.setdefault("poll_interval_s", 0.05)
    kwargs.setdefault("wifi_timeout_s", 20)
    return transport, Provisioner(transport, **kwargs)


def pending_mapping(node):
    return json.loads((node.extra["flash"] / "state.json").read_text())["pending_mapping"]


@pytest.mark.parametrize("sec_ver, interpreter", [(0, "micropython"), (1, "micropython"), (1, "cpython")])
def test_full_sequence(firmware_node_factory, sec_ver, interpreter):
    node = firmware_node_factory(sec_ver=sec_ver, pop=POP, interpreter=interpreter)
    transport, client = client_for(node, sec=sec_ver, pop=POP if sec_ver else None)
    with transport:
        result = client.provision("HomeNet", "right-pass", "user-1", "secret-1", scan=True)
    assert result.node_id == "VNODE0042"
    assert result.sec_ver == sec_ver
    assert (result.wifi.state, result.wifi.ip4_addr, result.wifi.ssid) == ("Connected", "127.0.0.42", "HomeNet")
    assert pending_mapping(node) == {"user_id": "user-1", "secret_key": "secret-1"}
    log = node.log_text()
    for secret in ("right-pass", "secret-1", POP):
        assert secret not in log


def test_wrong_pop_then_right_pop(firmware_node_factory):
    node = firmware_node_factory(sec_ver=1, pop=POP)
    transport, client = client_for(node, sec=1, pop="wrong-pop")
    with transport, pytest.raises(HandshakeFailed, match="PoP"):
        client.start_session()
    transport, client = client_for(node, sec=1, pop=POP)
    with transport:
        result = client.provision("HomeNet", "right-pass", "user-1", "secret-1")
    assert result.node_id == "VNODE0042"
    assert node.alive()


def test_wrong_wifi_password_then_reset_and_retry(firmware_node_factory):
    node = firmware_node_factory(sec_ver=1, pop=POP)
    transport, client = client_for(node, sec=1, pop=POP)
    with transport:
        with pytest.raises(WifiJoinFailed) as failure:
            client.provision("HomeNet", "wrong-pass", "user-1", "secret-1")
        assert (failure.value.state, failure.value.reason) == ("ConnectionFailed", "AuthError")
        client.reset_wifi()
        client.set_wifi_config("HomeNet", "right-pass")
        client.apply_wifi_config()
        assert client.wait_for_wifi("HomeNet").state == "Connected"


def test_network_not_found(firmware_node_factory):
    node = firmware_node_factory(sec_ver=0)
    transport, client = client_for(node, sec=0)
    with transport, pytest.raises(WifiJoinFailed) as failure:
        client.provision("Elsewhere", "whatever1", "user-1", "secret-1")
    assert failure.value.reason == "NetworkNotFound"


def test_node_refuses_an_oversized_user_id(firmware_node_factory):
    node = firmware_node_factory(sec_ver=1, pop=POP)
    transport, client = client_for(node, sec=1, pop=POP)
    with transport, pytest.raises(MappingRefused) as refused:
        client.provision("HomeNet", "right-pass", "u" * 200, "secret-1")
    assert refused.value.status_name == "InvalidParam"


def test_cli_against_the_unix_port(firmware_node_factory):
    node = firmware_node_factory(sec_ver=1, pop=POP)
    run = subprocess.run([sys.executable, "-m", "rmkit", "provision", "--host", f"127.0.0.1:{node.port}",
                          "--sec", "1", "--pop", POP, "--ssid", "HomeNet", "--passphrase", "right-pass",
                          "--user-id", "user-1"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "node_id VNODE0042"
    assert POP not in run.stdout + run.stderr and "right-pass" not in run.stdout + run.stderr


def test_twenty_sessions_in_a_row(firmware_node_factory, artifacts_dir):
    """Every new session replaces the previous one cleanly; timings recorded (not asserted) for the report."""
    node = firmware_node_factory(sec_ver=1, pop=POP)
    handshakes, requests = [], []
    for _ in range(20):
        transport, client = client_for(node, sec=1, pop=POP)
        with transport:
            client.start_session()
            handshakes.append(client.timings_s["handshake"])
            started = time.perf_counter()
            assert client.set_user_mapping("user-1", "secret-1") == "VNODE0042"
            requests.append(time.perf_counter() - started)
    report = {"sessions": 20, "handshake_median_ms": statistics.median(handshakes) * 1000,
              "cloud_user_assoc_median_ms": statistics.median(requests) * 1000}
    (artifacts_dir / "timings.json").write_text(json.dumps(report, indent=2))
    print(report)
    assert node.alive()


def raw_post(port, endpoint, body, cookie=None):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Cookie": cookie} if cookie else {}
    try:
        conn.request("POST", "/" + endpoint, body, headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_bad_requests_cost_one_connection_and_the_node_keeps_serving(firmware_node_factory):
    import os
    node = firmware_node_factory(sec_ver=1, pop=POP)
    assert raw_post(node.port, "no-such-endpoint", b"x") == 404
    assert raw_post(node.port, "cloud_user_assoc", os.urandom(40)) == 500  # encrypted request before a handshake
    assert raw_post(node.port, "prov-session", os.urandom(40)) == 500  # random bytes as a handshake
    assert raw_post(node.port, "prov-session", bytes.fromhex("5203a20100")) == 500  # Sec0 cmd to a Sec1 node
    transport, client = client_for(node, sec=1, pop=POP)
    with transport:
        assert client.provision("HomeNet", "right-pass", "user-1", "secret-1").node_id == "VNODE0042"
    assert pending_mapping(node) == {"user_id": "user-1", "secret_key": "secret-1"}


def test_replaced_session_fails_cleanly_and_a_new_one_works(firmware_node_factory):
    from rmkit.provision import TransportError
    node = firmware_node_factory(sec_ver=1, pop=POP)
    first_transport, first = client_for(node, sec=1, pop=POP)
    first.start_session()
    second_transport, second = client_for(node, sec=1, pop=POP)
    with second_transport:
        second.start_session()  # a second client replaces the first one's session (docs/protocol.md 1.1)
        assert second.set_user_mapping("user-2", "secret-2") == "VNODE0042"
    with first_transport:
        with pytest.raises(TransportError, match="HTTP 500"):
            first.set_user_mapping("user-1", "secret-1")  # stale cookie: new session without handshake
        first.start_session()
        assert first.set_user_mapping("user-1", "secret-1") == "VNODE0042"
    assert pending_mapping(node) == {"user_id": "user-1", "secret_key": "secret-1"}
