"""`rmkit provision` end to end against the reference node: output lines, exit codes, no secrets printed."""

import logging
import os
import re
import subprocess
import sys

import pytest

from rmkit.__main__ import main
from rmkit.net import free_port

POP = "pop-abcd1234"
PASSPHRASE = "right-pass"


def run_cli(capsys, *argv):
    status = main(["-vv", "provision", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def base_args(port, **overrides):
    args = {"--host": f"127.0.0.1:{port}", "--sec": "1", "--pop": POP, "--ssid": "HomeNet",
            "--passphrase": PASSPHRASE, "--user-id": "user-1", "--poll-interval": "0.01"}
    args.update(overrides)
    return [item for key, value in args.items() if value is not None for item in (key, value)]


def assert_no_secrets(text, *secrets):
    for secret in secrets:
        assert secret not in text


def test_provision_prints_node_id_and_no_secrets(reference_node_factory, capsys, caplog):
    served = reference_node_factory(sec_ver=1, pop=POP)
    status, out, err = run_cli(capsys, *base_args(served.port))
    assert status == 0, err
    assert out.strip().splitlines()[-1] == "node_id NODE0123456789"
    assert "session established" in err and "joined 'HomeNet'" in err
    user_id, secret_key = served.node.mapping
    assert user_id == "user-1"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", secret_key)  # fresh uuid4
    assert_no_secrets(out + err + caplog.text, POP, PASSPHRASE, secret_key)


def test_secret_key_given_and_shown_on_request(reference_node_factory, capsys):
    served = reference_node_factory(sec_ver=0)
    status, out, err = run_cli(capsys, *base_args(served.port, **{"--sec": "0", "--pop": None}),
                               "--secret-key", "my-secret", "--show-secret-key")
    assert status == 0, err
    assert served.node.mapping == ("user-1", "my-secret")
    assert "secret_key my-secret" in out


def test_wrong_pop(reference_node_factory, capsys):
    served = reference_node_factory(sec_ver=1, pop=POP)
    status, out, err = run_cli(capsys, *base_args(served.port, **{"--pop": "not-the-pop"}))
    assert status == 4
    assert "session refused" in err and "PoP" in err
    assert "node_id" not in out  # (stdout also holds the in-process node's log lines)
    assert_no_secrets(err, "not-the-pop", POP)


def test_unreachable(capsys):
    port = free_port()
    status, out, err = run_cli(capsys, *base_args(port))
    assert status == 3
    assert err.strip().splitlines()[-1].startswith("rmkit provision: node unreachable")


@pytest.mark.parametrize("ssid, passphrase, reason", [("HomeNet", "wrong-pass", "AuthError"),
                                                       ("Elsewhere", "whatever1", "NetworkNotFound")])
def test_wifi_join_failure(reference_node_factory, capsys, ssid, passphrase, reason):
    served = reference_node_factory(sec_ver=1, pop=POP)
    status, out, err = run_cli(capsys, *base_args(served.port, **{"--ssid": ssid, "--passphrase": passphrase}))
    assert status == 6
    last = err.strip().splitlines()[-1]
    assert f"could not join Wi-Fi '{ssid}'" in last and reason in last
    assert_no_secrets(err, passphrase)


def test_mapping_refused(reference_node_factory, capsys):
    served = reference_node_factory(sec_ver=1, pop=POP)
    status, out, err = run_cli(capsys, *base_args(served.port, **{"--user-id": "refuse-me"}))
    assert status == 5
    assert "refused the user mapping" in err and "InvalidParam" in err


@pytest.mark.parametrize("overrides, message", [
    ({"--pop": None}, "--pop is required"),
    ({"--ssid": "S" * 33}, "SSID"),
    ({"--passphrase": "p" * 65}, "passphrase"),
    ({"--user-id": ""}, "user id"),
    ({"--host": "127.0.0.1:notaport"}, "--host"),
])
def test_bad_arguments_are_one_line_errors(reference_node_factory, capsys, overrides, message):
    served = reference_node_factory(sec_ver=1, pop=POP)
    status, out, err = run_cli(capsys, *base_args(served.port, **overrides))
    assert status == 2
    assert message in err.strip().splitlines()[-1]
    assert served.node.requests == []  # refused before anything reached the node


def test_help_explains_the_esp32_address_and_requires_host():
    help_text = subprocess.run([sys.executable, "-m", "rmkit", "provision", "--help"], capture_output=True,
                               text=True, check=True).stdout
    for option in ("--host", "--sec", "--pop", "--ssid", "--passphrase", "--user-id", "--secret-key",
                   "--transport", "--timeout", "--wifi-timeout", "--poll-interval", "--scan"):
        assert option in help_text
    assert "192.168.4.1:80" in help_text and "There is no default" in help_text  # the ESP32 default, in --help only
    missing = subprocess.run([sys.executable, "-m", "rmkit", "provision", "--ssid", "S", "--user-id", "u"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "--host" in missing.stderr


# --- challenge-response mapping (docs/protocol.md 7.1), against the in-process cloud ---

NODE_ID = "NODE0123456789"


@pytest.fixture
def ch_resp_node(reference_node_factory, node_pki):
    """A reference node that offers ch_resp and signs with the key of the certificate `node_pki` issued it."""
    from cryptography.hazmat.primitives import serialization

    def start(**kwargs):
        key = serialization.load_pem_private_key(node_pki.node_identity(NODE_ID).key_pem.read_bytes(), password=None)
        return reference_node_factory(sec_ver=1, pop=POP, signing_key=key, **kwargs)

    return start


@pytest.fixture
def alice(pki_cloud_service, monkeypatch):
    from support.fixtures_cloud import PASSWORD

    pki_cloud_service.add_user("alice@example.com", PASSWORD)
    monkeypatch.setenv("RMKIT_PASSWORD", PASSWORD)  # as a user keeps it off the command line
    return {"--cloud-url": pki_cloud_service.base_url, "--email": "alice@example.com", "--user-id": None}


def test_provision_by_challenge_response_maps_the_node_without_put_or_poll(ch_resp_node, alice, pki_cloud_service,
                                                                           capsys, caplog):
    caplog.set_level(logging.INFO, logger="rmkit.cloud.api")
    served = ch_resp_node()
    status, out, err = run_cli(capsys, *base_args(served.port, **alice))
    assert status == 0, err
    assert out.strip().splitlines()[-2:] == [f"node_id {NODE_ID}", "request_status confirmed"]
    assert "user mapping by challenge-response (the node offers ch_resp)" in err
    assert f"node {NODE_ID} added to alice@example.com's account by challenge-response" in err
    requests = [line for line in caplog.messages if line.startswith(("POST /v1", "PUT /v1", "GET /v1"))]
    assert [line.split(" -> ")[0] for line in requests] == [  # no PUT, no poll
        "POST /v1/login2", "POST /v1/user/nodes/mapping/initiate", "POST /v1/user/nodes/mapping/verify"]
    with pki_cloud_service.storage.read() as tx:
        alice_id = tx.user_by_email("alice@example.com").user_id
        assert tx.user_nodes_page(alice_id, None, 10) == [NODE_ID]
    assert_no_secrets(out + err + caplog.text, POP, PASSPHRASE, os.environ["RMKIT_PASSWORD"])


def test_mapping_ch_resp_on_a_node_without_it_is_one_line(reference_node_factory, alice, capsys):
    served = reference_node_factory(sec_ver=1, pop=POP)
    status, out, err = run_cli(capsys, *base_args(served.port, **alice), "--mapping", "ch_resp")
    assert status == 5
    last = err.strip().splitlines()[-1]
    assert last.startswith("rmkit provision: node does not offer challenge-response mapping")
    assert [endpoint for _, endpoint in served.node.requests] == ["proto-ver"]


def test_mapping_ch_resp_without_a_cloud_is_a_usage_error(ch_resp_node, capsys):
    served = ch_resp_node()
    status, out, err = run_cli(capsys, *base_args(served.port), "--mapping", "ch_resp")
    assert status == 2
    assert "--mapping ch_resp needs --cloud-url" in err.strip().splitlines()[-1]
    assert served.node.requests == []


def test_mapping_secret_on_a_ch_resp_node_sends_the_secret_key(ch_resp_node, capsys):
    served = ch_resp_node()
    status, out, err = run_cli(capsys, *base_args(served.port), "--mapping", "secret")
    assert status == 0, err
    assert served.node.mapping[0] == "user-1" and served.node.signed == []
    assert "user mapping by secret key (asked for)" in err


def test_a_node_that_answers_disabled_is_one_line(ch_resp_node, alice, capsys):
    served = ch_resp_node(ch_resp_disabled=True)
    status, out, err = run_cli(capsys, *base_args(served.port, **alice))
    assert status == 5
    last = err.strip().splitlines()[-1]
    assert last.startswith("rmkit provision: node declined to sign the mapping challenge: status 3 (Disabled)")
    assert served.node.wifi_config is None


def test_a_verify_the_cloud_refuses_is_one_line(ch_resp_node, alice, node_pki, capsys):
    node_pki.node_identity("NODEB0000002")
    served = ch_resp_node(ch_resp_node_id="NODEB0000002")  # signs with NODE_ID's key, names another node
    status, out, err = run_cli(capsys, *base_args(served.port, **alice))
    assert status == 9
    last = err.strip().splitlines()[-1]
    assert last.startswith("rmkit provision: the cloud refused the node's challenge response:")
    assert "(error 102007)" in last
    assert served.node.wifi_config is None and "node_id" not in out
