"""The local PKI: certificates that the board, mosquitto and host tools accept, keys kept private."""

import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rmkit.__main__ import main as rmkit_main
from rmkit.broker import Broker
from rmkit.pki import Pki, PkiError
from support.paths import VENV_BIN


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
    assert f"`{VENV_BIN / 'rmkit'} pki init`" in capsys.readouterr().err  # works pasted, venv or not


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


# -- the broker certificate names the hosts a real board connects to ----------------------------------

def _broker_names(pki):
    san = pki.broker_identity().certificate().extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def test_init_names_the_broker_hosts_given_and_a_rerun_with_others_reissues_only_the_broker(tmp_path, capsys):
    directory = str(tmp_path / "pki")
    assert rmkit_main(["pki", "--dir", directory, "init"]) == 0
    pki = Pki(directory)
    ca = pki.ca_der.read_bytes()
    cloud = pki.client_identity("cloud").cert_der.read_bytes()
    assert _broker_names(pki) == (["localhost"], ["127.0.0.1"])  # the default stays
    capsys.readouterr()

    assert rmkit_main(["pki", "--dir", directory, "init", "--broker-host", "192.168.1.20",
                       "--broker-host", "MyPC.lan."]) == 0
    out = capsys.readouterr().out
    # an address goes in as an IP entry (a board's mbedtls checks those for an address), a name as DNS
    assert _broker_names(Pki(directory)) == (["localhost", "mypc.lan"], ["127.0.0.1", "192.168.1.20"])
    assert "broker: CN=localhost valid until " in out and "(for localhost, mypc.lan, 127.0.0.1, 192.168.1.20)" in out
    assert "broker certificate re-issued for localhost, mypc.lan, 127.0.0.1, 192.168.1.20 (same CA): restart a " \
           "running broker" in out
    first = pki.broker_identity().cert_der.read_bytes()

    assert rmkit_main(["pki", "--dir", directory, "init"]) == 0  # no hosts: the names are kept
    assert pki.broker_identity().cert_der.read_bytes() == first and "re-issued" not in capsys.readouterr().out
    assert Broker(Pki(directory), tmp_path / "b").identity.cert_der.read_bytes() == first  # a broker keeps them too

    assert rmkit_main(["pki", "--dir", directory, "init", "--broker-host", "10.0.0.7"]) == 0  # others replace them
    assert _broker_names(Pki(directory)) == (["localhost"], ["127.0.0.1", "10.0.0.7"])
    assert pki.ca_der.read_bytes() == ca and pki.client_identity("cloud").cert_der.read_bytes() == cloud
    Pki(directory).broker_identity().certificate().verify_directly_issued_by(pki.ca_certificate)


@pytest.mark.parametrize("bad", ["host:8883", "mqtts://host", "1.2.3", "-x.lan", "a b", ""])
def test_a_broker_host_that_is_no_name_or_address_is_one_line_before_anything_is_made(tmp_path, capsys, bad):
    directory = tmp_path / "pki"
    assert rmkit_main(["pki", "--dir", str(directory), "init", f"--broker-host={bad}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rmkit pki: --broker-host {bad!r}: give a host name (e.g. mypc.local) or an IP address "
                   "(e.g. 192.168.1.20), without port or scheme"]
    assert not directory.exists()


def test_a_tls_client_checking_the_host_accepts_the_broker_certificate_for_each_name(tmp_path):
    """CPython's hostname check, as paho and the cloud do it, for the default and an added address."""
    pki = Pki(tmp_path / "pki")
    broker = pki.broker_identity(hosts=["127.0.0.2"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(broker.cert_pem), str(broker.key_pem))
    for address, name in (("127.0.0.1", "localhost"), ("127.0.0.1", "127.0.0.1"), ("127.0.0.2", "127.0.0.2")):
        with socket.socket() as listener:
            listener.bind((address, 0))
            listener.listen()
            accepted = threading.Thread(target=lambda: _serve_once(server, listener), daemon=True)
            accepted.start()
            client = ssl.create_default_context(cafile=str(pki.ca_pem))
            with socket.create_connection(listener.getsockname(), timeout=5) as raw:
                with client.wrap_socket(raw, server_hostname=name) as tls:
                    assert tls.recv(2) == b"ok"
            accepted.join(5)
    client = ssl.create_default_context(cafile=str(pki.ca_pem))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        threading.Thread(target=lambda: _serve_once(server, listener), daemon=True).start()
        with socket.create_connection(listener.getsockname(), timeout=5) as raw:
            with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
                client.wrap_socket(raw, server_hostname="127.0.0.3")


def _serve_once(context, listener):
    conn, _ = listener.accept()
    try:
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"ok")
    except (ssl.SSLError, OSError):
        pass
