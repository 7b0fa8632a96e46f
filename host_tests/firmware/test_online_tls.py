"""Mutual TLS from the node's side on the unix port: it refuses a wrong broker, and the broker refuses a wrong node."""

import shutil

from rmkit.pki import Pki

from support.fixtures_mqtt import make_flash, read_state

NODE = "A1B2C3D4E5F6"


def _refused(node, broker):
    """The node keeps retrying without ever getting a session, and keeps its pending mapping."""
    node.wait_for(r"connect failed: .*; retry in \d+ ms", count=2)
    assert f"as {NODE} (" not in broker.log_text()  # mosquitto's "New client connected ... as <id>"
    assert "connected in" not in node.output()


def test_node_refuses_a_broker_certificate_from_another_ca(pki, broker_factory, node_runner, tmp_path):
    impostor = broker_factory("impostor", pki_=Pki(tmp_path / "other-ca")).start()
    flash = make_flash(tmp_path / "flash", pki, NODE, impostor.port, pending=("user-42", "s3cr3t"))
    node = node_runner(flash)
    _refused(node, impostor)
    assert "not correctly signed" in node.output() or "verify" in node.output().lower()
    assert read_state(flash)["pending_mapping"]["user_id"] == "user-42"


def test_node_refuses_a_broker_certificate_naming_another_host(pki, broker_factory, node_runner, tmp_path):
    elsewhere = pki.server_identity("elsewhere", dns_names=["mqtt.example.org"])
    broker = broker_factory("elsewhere", server_identity=elsewhere).start()
    flash = make_flash(tmp_path / "flash", pki, NODE, broker.port, pending=("user-42", "s3cr3t"))
    node = node_runner(flash)
    _refused(node, broker)
    assert "does not match" in node.output() or "CN" in node.output()


def test_broker_refuses_a_node_certificate_from_another_ca(pki, broker, node_runner, tmp_path):
    other = Pki(tmp_path / "other-ca")
    flash = make_flash(tmp_path / "flash", other, NODE, broker.port, pending=("user-42", "s3cr3t"))
    shutil.copyfile(pki.ca_der, flash / "factory" / "ca.crt.der")  # it trusts our broker, but its cert is foreign
    node = node_runner(flash)
    _refused(node, broker)


def test_a_node_without_certificate_does_not_start_mqtt(pki, broker, node_runner, tmp_path):
    flash = make_flash(tmp_path / "flash", pki, NODE, broker.port, pending=("user-42", "s3cr3t"))
    (flash / "factory" / "node.crt.der").unlink()
    node = node_runner(flash)
    assert node.wait_exit() == 3
    assert "TEST config error: cannot load the TLS files" in node.output()
    assert "Traceback" not in node.output()
    assert f"as {NODE} (" not in broker.log_text()
