"""The local PKI: certificates that the board, mosquitto and host tools accept, keys kept private."""

import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rmkit.__main__ import main as rmkit_main
from rmkit.pki import Pki, PkiError


def _cn(cert):
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_node_certificate_has_node_id_as_cn_and_client_auth(tmp_path):
    pki = Pki(tmp_path / "pki")
    node = pki.node_identity("A1B2C3D4E5F6")
    cert = node.certificate()
    assert _cn(cert) == "A1B2C3D4E5F6"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(pki.ca_certificate)
    # the DER files are the same certificate and a key the board's mbedtls reads (PKCS#8 DER)
    assert x509.load_der_x509_certificate(node.cert_der.read_bytes()) == cert
    key = serialization.load_der_private_key(node.key_der.read_bytes(), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert node.key_der.read_bytes()[:1] == b"\x30"


def test_broker_certificate_names_localhost_and_loopback(tmp_path):
    pki = Pki(tmp_path / "pki")
    cert = pki.broker_identity().certificate()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_keys_are_private_files(tmp_path):
    pki = Pki(tmp_path / "pki")
    node = pki.node_identity("node1")
    for path in (node.key_pem, node.key_der, pki.directory / "ca" / "ca.key.pem"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700


def test_reopening_reuses_ca_and_identities(tmp_path):
    first = Pki(tmp_path / "pki")
    node = first.node_identity("node1")
    before = node.cert_der.read_bytes()
    second = Pki(tmp_path / "pki")
    assert second.ca_der.read_bytes() == first.ca_der.read_bytes()
    assert second.node_identity("node1").cert_der.read_bytes() == before


def test_identity_from_a_replaced_ca_is_reissued(tmp_path):
    pki = Pki(tmp_path / "pki")
    node = pki.node_identity("node1")
    other = Pki(tmp_path / "other")
    # a foreign certificate dropped in place of node1's must not be trusted as current
    foreign = other.node_identity("node1")
    node.cert_pem.write_bytes(foreign.cert_pem.read_bytes())
    node.key_pem.write_bytes(foreign.key_pem.read_bytes())
    reissued = pki.node_identity("node1").certificate()
    reissued.verify_directly_issued_by(pki.ca_certificate)


def test_host_tools_can_use_the_pem_files(tmp_path):
    pki = Pki(tmp_path / "pki")
    harness = pki.client_identity("harness")
    context = ssl.create_default_context(cafile=str(pki.ca_pem))
    context.load_cert_chain(str(harness.cert_pem), str(harness.key_pem))


@pytest.mark.parametrize("bad", ["", "a/b", "node+1", "node#", "../x", "x" * 65, "with space"])
def test_unsafe_node_ids_are_refused(tmp_path, bad):
    with pytest.raises(PkiError, match="invalid node id"):
        Pki(tmp_path / "pki").node_identity(bad)


def test_cli_init_node_show(tmp_path, capsys):
    directory = str(tmp_path / "pki")
    assert rmkit_main(["pki", "--dir", directory, "init"]) == 0
    assert rmkit_main(["pki", "--dir", directory, "node", "AABBCCDDEEFF"]) == 0
    assert rmkit_main(["pki", "--dir", directory, "show"]) == 0
    out = capsys.readouterr().out
    assert "CN=AABBCCDDEEFF" in out and "broker" in out and "harness" in out
    assert "PRIVATE KEY" not in out
    assert rmkit_main(["pki", "--dir", directory, "node", "bad/id"]) == 2


def test_cli_show_without_ca_is_a_one_line_error(tmp_path, capsys):
    assert rmkit_main(["pki", "--dir", str(tmp_path / "none"), "show"]) == 2
    assert "rmkit pki init" in capsys.readouterr().err


def test_pki_show_names_each_identity_once(tmp_path):
    import subprocess
    import sys

    for action in ("init", "show"):
        result = subprocess.run([sys.executable, "-m", "rmkit", "pki", "--dir", str(tmp_path / "pki"), action],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("broker: CN=localhost valid until ") for line in lines), lines
    assert not any("CN=CN=" in line for line in lines)
