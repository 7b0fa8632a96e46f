"""Factory data on a board's flash: the files and keys the firmware reads at /factory."""

import json
import re
import stat

import pytest

from rmkit.__main__ import main as rmkit_main
from rmkit.errors import UserError
from rmkit.factory import mpremote_command, write_factory_data
from rmkit.pki import Pki
from rmkit.vboard.board import mac_for_name
from support.paths import VENV_BIN


def test_factory_data_in_a_virtual_boards_flash(pki, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    path = write_factory_data(flash, pki, node_id="A1B2C3D4E5F6", pop="abcd1234", sec_ver=1,
                              mqtt_host="localhost", mqtt_port=18883, topic_prefix="")
    assert path == flash / "factory" / "factory.json"
    assert json.loads(path.read_text()) == {
        "node_id": "A1B2C3D4E5F6", "pop": "abcd1234", "sec_ver": 1, "mqtt_host": "localhost",
        "mqtt_port": 18883, "topic_prefix": "",
        "cert": "/factory/node.crt.der", "key": "/factory/node.key.der", "ca": "/factory/ca.crt.der"}
    node = pki.node_identity("A1B2C3D4E5F6")
    assert (flash / "factory" / "node.crt.der").read_bytes() == node.cert_der.read_bytes()
    assert (flash / "factory" / "node.key.der").read_bytes() == node.key_der.read_bytes()
    assert (flash / "factory" / "ca.crt.der").read_bytes() == pki.ca_der.read_bytes()
    for secret in ("node.key.der", "factory.json"):
        assert stat.S_IMODE((flash / "factory" / secret).stat().st_mode) == 0o600


def test_without_node_id_the_board_gets_no_certificate(pki, tmp_path):
    path = write_factory_data(tmp_path, pki, node_id=None, pop="pop", mqtt_port=8883)
    data = json.loads(path.read_text())
    assert "node_id" not in data and "cert" not in data
    assert sorted(p.name for p in path.parent.iterdir()) == ["factory.json"]


@pytest.mark.parametrize("options, message", [
    (dict(mqtt_port=0), "invalid MQTT port"),
    (dict(sec_ver=3), "sec_ver"),
    (dict(pop="", sec_ver=1), "PoP is required"),
    (dict(user_mapping="cloud"), "user mapping must be one of both, ch_resp, secret"),
    (dict(transport="wifi"), "transport must be one of"),
])
def test_bad_factory_settings_are_refused_before_writing(pki, tmp_path, options, message):
    arguments = dict(node_id="node1", pop="pop", mqtt_port=8883)
    arguments.update(options)
    with pytest.raises(UserError, match=message):
        write_factory_data(tmp_path, pki, **arguments)
    assert not (tmp_path / "factory" / "factory.json").exists()


def test_missing_flash_dir_is_a_user_error(pki, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_factory_data(tmp_path / "nope", pki, node_id="n1", pop="p", mqtt_port=1)


def test_serial_variant_copies_every_file_with_one_mpremote_call(tmp_path):
    files = [tmp_path / "factory.json", tmp_path / "node.crt.der"]
    command = mpremote_command("/dev/ttyUSB0", files)
    assert command[1:6] == ["-m", "mpremote", "connect", "/dev/ttyUSB0", "resume"]
    assert command[-3:] == [str(files[0]), str(files[1]), ":/factory/"]
    assert "fs" in command and "cp" in command


def test_cli_writes_flash_and_never_prints_the_pop(pki, tmp_path, capsys):
    flash = tmp_path / "flash"
    flash.mkdir()
    status = rmkit_main(["factory", "--flash", str(flash), "--node-id", "node7", "--pop", "s3cr3tpop",
                         "--mqtt-port", "12345", "--pki-dir", str(pki.directory)])
    assert status == 0
    out = capsys.readouterr()
    assert "s3cr3tpop" not in out.out + out.err
    assert json.loads((flash / "factory" / "factory.json").read_text())["mqtt_port"] == 12345


def test_cli_creates_a_new_flash_directory_as_rmkit_vboard_does(pki, tmp_path):
    flash = tmp_path / "vboards" / "new-board"  # neither it nor its parent exists yet
    status = rmkit_main(["factory", "--flash", str(flash), "--node-id", "node8", "--pop", "p",
                         "--mqtt-port", "1234", "--pki-dir", str(pki.directory)])
    assert status == 0
    assert json.loads((flash / "factory" / "factory.json").read_text())["node_id"] == "node8"


def test_cli_refuses_a_flash_path_that_is_a_file(pki, tmp_path, capsys):
    flash = tmp_path / "flash.bin"
    flash.write_bytes(b"\xff" * 8)
    status = rmkit_main(["factory", "--flash", str(flash), "--node-id", "node9", "--pki-dir", str(pki.directory)])
    assert status != 0
    assert "is a file" in capsys.readouterr().err
    assert flash.read_bytes() == b"\xff" * 8


# -- the broker host must be one the broker certificate names -------------------------------------------

def test_factory_refuses_a_broker_host_the_broker_certificate_does_not_name(tmp_path, capsys):
    pki_dir = tmp_path / "pki"
    Pki(pki_dir).broker_identity(hosts=["mypc.lan"])
    flash = tmp_path / "flash"
    status = rmkit_main(["factory", "--flash", str(flash), "--node-id", "node1", "--pop", "p", "--mqtt-host",
                         "192.168.1.20", "--mqtt-port", "8883", "--pki-dir", str(pki_dir)])
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "rmkit factory: --mqtt-host 192.168.1.20: the broker certificate names localhost, mypc.lan, 127.0.0.1, so the "
        f"board would refuse the broker there: run `{VENV_BIN / 'rmkit'} pki --dir {pki_dir} init --broker-host mypc.lan "
        "--broker-host 192.168.1.20` first (and restart the broker)"]
    assert not (flash / "factory").exists()


def test_factory_takes_a_host_after_rmkit_pki_init_named_it(tmp_path, capsys):
    pki_dir = tmp_path / "pki"
    assert rmkit_main(["pki", "--dir", str(pki_dir), "init", "--broker-host", "192.168.1.20"]) == 0
    flash = tmp_path / "flash"
    for host in ("192.168.1.20", "localhost", "127.0.0.1"):
        assert rmkit_main(["factory", "--flash", str(flash), "--node-id", "node1", "--pop", "p", "--mqtt-host", host,
                           "--mqtt-port", "8883", "--pki-dir", str(pki_dir)]) == 0
        assert json.loads((flash / "factory" / "factory.json").read_text())["mqtt_host"] == host


def test_factory_refuses_a_broker_host_with_a_port(tmp_path, capsys):
    status = rmkit_main(["factory", "--flash", str(tmp_path / "flash"), "--node-id", "node1", "--pop", "p",
                         "--mqtt-host", "192.168.1.20:8883", "--pki-dir", str(tmp_path / "pki")])
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "rmkit factory: --mqtt-host '192.168.1.20:8883': give the broker's host name or IP address, without port or "
        "scheme (the port is --mqtt-port)"]


@pytest.mark.parametrize("user_mapping, written", [("both", None), ("ch_resp", "ch_resp"), ("secret", "secret")])
def test_the_user_mapping_setting_is_written_unless_it_is_the_default(pki, tmp_path, user_mapping, written):
    path = write_factory_data(tmp_path, pki, node_id="node1", pop="pop", user_mapping=user_mapping)
    assert json.loads(path.read_text()).get("user_mapping") == written


# -- the PoP: random unless given; from the MAC only on request; printed only when asked -------------------

def _factory(flash, pki, *options) -> int:
    return rmkit_main(["factory", "--flash", str(flash), "--node-id", "node1", "--pki-dir", str(pki.directory),
                       *options])


def _written_pop(flash) -> str:
    return json.loads((flash / "factory" / "factory.json").read_text())["pop"]


def test_without_a_pop_the_board_gets_a_random_one_and_is_told_where_it_is_not_what_it_is(pki, tmp_path, capsys):
    pops = []
    for name in ("a", "b"):
        flash = tmp_path / name
        assert _factory(flash, pki) == 0
        pops.append(_written_pop(flash))
        out = capsys.readouterr()
        assert pops[-1] not in out.out + out.err
        assert (f"factory: PoP (random, 8 hex digits) written to {flash / 'factory' / 'factory.json'}; --show-pop "
                "prints it") in out.out.splitlines()
    assert all(re.fullmatch(r"[0-9a-f]{8}", pop) for pop in pops) and pops[0] != pops[1], pops
    assert mac_for_name("a").replace(":", "")[4:] not in pops  # never the firmware's MAC fallback (docs/protocol.md 7.4)


def test_show_pop_prints_it(pki, tmp_path, capsys):
    assert _factory(tmp_path / "flash", pki, "--show-pop") == 0
    pop = _written_pop(tmp_path / "flash")
    assert f": {pop} (shown because --show-pop was given)" in capsys.readouterr().out


def test_a_mac_derived_pop_only_on_request_and_with_a_warning(pki, tmp_path, capsys):
    flash = tmp_path / "flash"
    assert _factory(flash, pki, "--pop", "mac", "--mac", "24:0A:C4:12:34:56") == 0
    assert _written_pop(flash) == "c4123456"  # docs/protocol.md 7.4: MAC bytes 2 to 5
    out = capsys.readouterr()
    assert out.err.splitlines() == [
        "factory: warning: a PoP derived from the MAC is guessable: the board's access point is named PROV_ and the "
        "MAC's last three bytes and broadcasts a BSSID next to the MAC, so anyone in radio range can work it out; "
        "leave --pop out for a random one"]
    assert "PoP (derived from the MAC 24:0a:c4:12:34:56) written to" in out.out and "c4123456" not in out.out
    assert _factory(tmp_path / "other", pki, "--pop", "mac") == 2  # a stopped board's MAC is unknown
    assert "--pop mac needs the board's MAC: give --mac" in capsys.readouterr().err


def test_a_mac_derived_pop_over_the_serial_port_is_the_boards_own(vboard, pki, capsys):
    assert rmkit_main(["factory", "--port", str(vboard.pty_link), "--node-id", "node1", "--pop", "mac",
                       "--pki-dir", str(pki.directory)]) == 0
    assert json.loads((vboard.flash_dir / "factory" / "factory.json").read_text())["pop"] == \
        vboard.mac.replace(":", "")[4:]  # what the firmware derives (config.py) and make vboard shows
