"""Write a board's factory data (node id, PoP, DER certificate + key, CA, broker, topic prefix) onto its flash.

The contract with the firmware (docs/protocol.md 7.3, firmware/rmnode/config.py): /factory/factory.json plus the three DER files it
points at. A virtual board's flash is a host directory, written directly; a real board is written
through mpremote (`mpremote connect PORT fs cp ...`). The key file is the node's private key:
it is written with mode 0600 on the host side and never printed.

The PoP is random unless one is given (docs/protocol.md 7.4: upstream's "random" type); the "MAC" type
only on request (`--pop mac`), with a warning: the board's access point is named after its MAC and
broadcasts a BSSID next to it, so that PoP is guessable. The firmware itself falls back to the MAC type
when factory data holds no PoP; these tools always write one and never rely on that fallback. The PoP
is never printed unless asked for (`--show-pop`), as `make sandbox` prints its board's on purpose.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from rmkit import venv_tool
from rmkit.errors import UserError
from rmkit.pki import DEFAULT_BROKER_HOSTS, DEFAULT_PKI_DIR, Pki, check_host, names_host, san_names

log = logging.getLogger(__name__)

FACTORY_DIR = "factory"  # /factory on the board
CERT_FILE, KEY_FILE, CA_FILE = "node.crt.der", "node.key.der", "ca.crt.der"
DEFAULT_MQTT_HOST = "localhost"
DEFAULT_MQTT_PORT = 8883


# docs/protocol.md 1: how the node serves provisioning
TRANSPORTS = ("softap", "ble", "both")
# docs/protocol.md 7.1: how the node maps its user (both: ch_resp advertised, cloud_user_assoc still served)
USER_MAPPINGS = ("both", "ch_resp", "secret")


def factory_json(node_id: Optional[str], pop: str, with_credentials: bool, *, sec_ver: int = 1,
                 mqtt_host: str = DEFAULT_MQTT_HOST, mqtt_port: int = DEFAULT_MQTT_PORT, topic_prefix: str = "",
                 sntp_host: Optional[str] = None, sntp_port: Optional[int] = None, transport: str = "softap",
                 user_mapping: str = "both") -> dict:
    """factory.json's content, every value checked (UserError naming the bad one). The keyword arguments are the
    factory settings every function below passes through unchanged."""
    if sec_ver not in (0, 1, 2):
        raise UserError(f"sec_ver must be 0, 1 or 2, not {sec_ver!r}")
    if not isinstance(mqtt_port, int) or not 0 < mqtt_port < 65536:
        raise UserError(f"invalid MQTT port {mqtt_port!r}")
    if not isinstance(pop, str) or (sec_ver and not pop):
        raise UserError("a PoP is required for security 1 and 2")
    if sntp_host is not None and not (isinstance(sntp_host, str) and 0 < len(sntp_host) <= 64):
        raise UserError(f"invalid SNTP host {sntp_host!r} (1..64 characters)")
    if sntp_port is not None and (not isinstance(sntp_port, int) or not 0 < sntp_port < 65536):
        raise UserError(f"invalid SNTP port {sntp_port!r}")
    if transport not in TRANSPORTS:
        raise UserError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    if user_mapping not in USER_MAPPINGS:
        raise UserError(f"user mapping must be one of {', '.join(USER_MAPPINGS)}, not {user_mapping!r}")
    data: dict = {}
    if node_id is not None:
        data["node_id"] = node_id
    data.update({"pop": pop, "sec_ver": sec_ver, "mqtt_host": mqtt_host, "mqtt_port": mqtt_port,
                 "topic_prefix": topic_prefix})
    if sntp_host is not None:  # the node asks this server for the time before its first TLS handshake
        data["sntp_host"] = sntp_host
    if sntp_port is not None:
        data["sntp_port"] = sntp_port
    if transport != "softap":  # the node's default (docs/protocol.md 1)
        data["transport"] = transport
    if user_mapping != "both":  # the node's default (docs/protocol.md 7.1)
        data["user_mapping"] = user_mapping
    if with_credentials:
        data.update({"cert": f"/{FACTORY_DIR}/{CERT_FILE}", "key": f"/{FACTORY_DIR}/{KEY_FILE}",
                     "ca": f"/{FACTORY_DIR}/{CA_FILE}"})
    return data


def stage_factory_files(target: Path, pki: Pki, node_id: Optional[str], pop: str, **settings) -> list[Path]:
    """Write factory.json and the DER files into `target` (the board's /factory); returns the files. `settings`:
    factory_json's keyword arguments.

    Without a node id there is no certificate to issue (its CN is the node id): the board then gets
    PoP and broker settings only, and takes its node id from the MAC.
    """
    target.mkdir(parents=True, exist_ok=True)
    files = []
    if node_id is not None:
        identity = pki.node_identity(node_id)
        for source, name in ((identity.cert_der, CERT_FILE), (identity.key_der, KEY_FILE), (pki.ca_der, CA_FILE)):
            destination = target / name
            shutil.copyfile(source, destination)
            if name == KEY_FILE:
                os.chmod(destination, 0o600)
            files.append(destination)
    else:
        log.warning("no node id: factory data without an MQTT client certificate")
    data = factory_json(node_id, pop, node_id is not None, **settings)
    path = target / "factory.json"
    tmp = path.with_name("factory.json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.chmod(tmp, 0o600)  # it holds the PoP
    os.replace(tmp, path)
    files.insert(0, path)
    return files


def write_factory_data(flash_dir: Path | str, pki: Pki, node_id: Optional[str] = None, pop: str = "",
                       **settings) -> Path:
    """Write /factory/... into a virtual board's flash directory; returns the factory.json path. `settings`:
    factory_json's keyword arguments."""
    flash = Path(flash_dir)
    if not flash.is_dir():
        raise UserError(f"flash directory {flash} does not exist")
    return stage_factory_files(flash / FACTORY_DIR, pki, node_id, pop, **settings)[0]


def mpremote_command(port: str, files: list[Path]) -> list[str]:
    """One mpremote call: create /factory if needed, then copy every file into it (no soft reset)."""
    mkdir = f"import os\ntry:\n os.mkdir('/{FACTORY_DIR}')\nexcept OSError:\n pass"
    command = [sys.executable, "-m", "mpremote", "connect", port, "resume", "exec", mkdir, "+", "fs", "cp"]
    command += [str(f) for f in files] + [f":/{FACTORY_DIR}/"]
    return command


def write_factory_data_serial(port: str, pki: Pki, node_id: Optional[str] = None, pop: str = "",
                              timeout: float = 60.0, **settings) -> None:
    """Copy the factory files onto a real (or virtual) board through mpremote on `port`. `settings`: factory_json's
    keyword arguments."""
    with tempfile.TemporaryDirectory(prefix="rmkit-factory-") as tmp:
        files = stage_factory_files(Path(tmp), pki, node_id, pop, **settings)
        command = mpremote_command(port, files)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"mpremote on {port} did not finish within {timeout:.0f} s") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise UserError(f"mpremote on {port} failed: {detail[-1] if detail else 'exit status %d' % result.returncode}")


POP_FROM_MAC = "mac"  # --pop mac: the firmware's "MAC" type, on request only
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
MAC_POP_WARNING = ("factory: warning: a PoP derived from the MAC is guessable: the board's access point is named "
                   "PROV_ and the MAC's last three bytes and broadcasts a BSSID next to the MAC, so anyone in radio "
                   "range can work it out; leave --pop out for a random one")
# the board's base MAC, read at its REPL (one mpremote round trip)
READ_MAC = "import network, binascii\nprint('MAC', binascii.hexlify(network.WLAN(network.STA_IF).config('mac'), ':').decode())"


def random_pop() -> str:
    """docs/protocol.md 7.4, upstream's random type: 8 hex digits from the operating system's random source."""
    return secrets.token_hex(4)


def pop_from_mac(mac: str) -> str:
    """docs/protocol.md 7.4, the "MAC" type: MAC bytes 2 to 5 in lower-case hex (the firmware's fallback)."""
    return mac.replace(":", "").lower()[4:12]


def board_mac(mac: Optional[str], flash: Optional[Path], port: Optional[str]) -> str:
    """The board's base MAC: as given, from the running virtual board on `flash`, or read at the REPL on `port`."""
    if mac is None and flash is not None:
        from rmkit.vboard import runtime

        running = runtime.board_using_flash(flash)
        if running is None:
            raise UserError(f"--pop mac needs the board's MAC: give --mac (make vboard prints it) or start the board "
                            f"on {flash} first")
        mac = running["mac"]
    elif mac is None:
        from rmkit.deploy import SerialPort

        output = SerialPort(port).run(["exec", READ_MAC], timeout=30)
        found = [line.split()[1] for line in output.splitlines() if line.startswith("MAC ")]
        if not found:
            raise UserError(f"cannot read the MAC of the board on {port}: {output.strip()[-200:] or 'no answer'}")
        mac = found[0]
    if not _MAC.match(mac):
        raise UserError(f"--mac {mac!r} must look like 24:0a:c4:12:34:56")
    return mac.lower()


def choose_pop(pop: Optional[str], sec_ver: int, mac: Optional[str], flash: Optional[Path],
               port: Optional[str]) -> tuple[str, str]:
    """(the PoP to write, how it was chosen) for --pop as given: random when left out (none for Security 0),
    the MAC type for `mac` (with a warning on stderr), else as given."""
    if pop is None:
        return ("", "none: Security 0") if sec_ver == 0 else (random_pop(), "random, 8 hex digits")
    if pop == POP_FROM_MAC:
        mac = board_mac(mac, flash, port)
        print(MAC_POP_WARNING, file=sys.stderr, flush=True)
        return pop_from_mac(mac), f"derived from the MAC {mac}"
    return pop, "as given"


def check_broker_host(pki: Pki, mqtt_host: str) -> None:
    """A board checks the broker's certificate against `mqtt_host` (CERT_REQUIRED with the host name):
    refuse factory data naming a host the broker certificate does not name."""
    try:
        check_host(mqtt_host)
    except UserError:
        raise UserError(f"--mqtt-host {mqtt_host!r}: give the broker's host name or IP address, without port or "
                        "scheme (the port is --mqtt-port)") from None
    cert = pki.broker_identity().certificate()  # issues the default one (localhost, 127.0.0.1) if there is none
    if names_host(cert, mqtt_host):
        return
    where = "" if Path(pki.directory).resolve() == DEFAULT_PKI_DIR.resolve() else f" --dir {pki.directory}"
    names = san_names(cert)
    keep = [name for name in names if name not in DEFAULT_BROKER_HOSTS]  # --broker-host replaces the set
    hosts = " ".join(f"--broker-host {shlex.quote(host)}" for host in (*keep, mqtt_host))
    raise UserError(f"--mqtt-host {mqtt_host}: the broker certificate names {', '.join(names)}, so the board would "
                    f"refuse the broker there: run `{venv_tool('rmkit')} pki{where} init {hosts}` first (and restart the broker)")


def _cmd_factory(args) -> int:
    pki = Pki(args.pki_dir)
    check_broker_host(pki, args.mqtt_host)
    where = args.flash or args.port
    print(f"factory: node id {args.node_id or '(from MAC, no certificate)'}, broker {args.mqtt_host}:{args.mqtt_port}"
          f"{', topic prefix ' + args.topic_prefix if args.topic_prefix else ''} -> {where}")
    if args.mac is not None and args.pop != POP_FROM_MAC:
        raise UserError("--mac is only used with --pop mac (a PoP derived from the MAC)")
    port = None
    if args.port:
        from rmkit.serialport import resolve_port

        port = args.port = resolve_port(args.port)
    flash = Path(args.flash) if args.flash else None
    if flash is not None and flash.exists() and not flash.is_dir():
        raise UserError(f"--flash {flash} is a file; give a virtual board's flash directory")
    pop, how = choose_pop(args.pop, args.sec_ver, args.mac, flash, port)
    options = dict(node_id=args.node_id, pop=pop, sec_ver=args.sec_ver, mqtt_host=args.mqtt_host,
                   mqtt_port=args.mqtt_port, topic_prefix=args.topic_prefix, sntp_host=args.sntp_host,
                   sntp_port=args.sntp_port, transport=args.transport, user_mapping=args.user_mapping)
    if flash is not None:
        flash.mkdir(parents=True, exist_ok=True)  # a new directory is a new (erased) board, as for `rmkit vboard`
        path = write_factory_data(flash, pki, **options)
        print(f"factory: wrote {path} and the DER files next to it")
        written = str(path)
    else:
        write_factory_data_serial(port, pki, **options)
        print(f"factory: copied factory data to /{FACTORY_DIR} on {port}")
        written = f"/{FACTORY_DIR}/factory.json on {port}"
    if pop:
        print(f"factory: PoP ({how}) written to {written}"
              + (f": {pop} (shown because --show-pop was given)" if args.show_pop else "; --show-pop prints it"))
    else:
        print(f"factory: no PoP ({how})")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "factory", help="write a board's factory data (node id, PoP, certificate, broker)",
        description="Write /factory/factory.json and the node's DER certificate, key and CA onto a board's flash: "
        "a virtual board's flash directory (--flash) or a real board over its serial port (--port, via mpremote). "
        "The node certificate is issued by the local PKI (`rmkit pki`) with CN = node id.")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--flash", metavar="DIR", help="a virtual board's flash directory")
    target.add_argument("--port", metavar="SERIAL", help="a board's serial port (or socket://host:port); auto: the one ESP32 board on USB")
    parser.add_argument("--node-id", help="node id (certificate CN); without it the board uses its MAC and gets no certificate")
    parser.add_argument("--pop", help="proof of possession for Security 1: default a random one (8 hex digits); "
                        "`mac` derives it from the board's MAC (guessable: only where that does not matter); the PoP "
                        "is not printed unless --show-pop")
    parser.add_argument("--show-pop", action="store_true",
                        help="print the PoP (you need it to provision the board; it is also in /factory/factory.json)")
    parser.add_argument("--mac", help="with --pop mac: the board's base MAC, e.g. 24:0a:c4:12:34:56 (default: read "
                        "from the board on --port, or from the running virtual board on --flash)")
    parser.add_argument("--sec-ver", type=int, default=1, choices=(0, 1), help="provisioning security: 1 (default) or 0")
    parser.add_argument("--transport", choices=TRANSPORTS, default="softap",
                        help="how the board serves provisioning: softap (its access point and HTTP, default), "
                        "ble (Bluetooth LE GATT) or both")
    parser.add_argument("--user-mapping", choices=USER_MAPPINGS, default="both",
                        help="how the node maps its user (docs/protocol.md 7.1): both (default: challenge-response "
                        "advertised, as RainMaker's current nodes, and the secret-key cloud_user_assoc still served "
                        "for older clients), ch_resp (challenge-response only, as upstream), or secret (cloud_user_assoc "
                        "only: Espressif's clients then use the secret-key flow)")
    parser.add_argument("--mqtt-host", default=DEFAULT_MQTT_HOST,
                        help="where the board finds the broker: a host name or IP address its certificate names "
                        "(see `rmkit pki init --broker-host`; default %(default)s)")
    parser.add_argument("--mqtt-port", type=int, default=DEFAULT_MQTT_PORT, help="broker port (see `rmkit broker`)")
    parser.add_argument("--topic-prefix", default="", help='"" for node/<id>/..., or "$aws/rules/esp_user_node_mapping/" '
                        "for RainMaker's basic-ingest topics")
    parser.add_argument("--sntp-host", help="SNTP server the node sets its clock from before TLS "
                        "(default on the node: pool.ntp.org)")
    parser.add_argument("--sntp-port", type=int, help="SNTP server port (default on the node: 123)")
    parser.add_argument("--pki-dir", default=str(DEFAULT_PKI_DIR), help="PKI directory (default: %(default)s)")
    parser.set_defaults(func=_cmd_factory)
