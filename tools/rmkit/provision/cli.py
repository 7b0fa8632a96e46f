"""`rmkit provision`: provision a node over SoftAP HTTP or BLE (user mapping + Wi-Fi) and print its node id."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid

from rmkit.cloud_client import CloudClient, CloudError
from rmkit.errors import UserError
from rmkit.provision.client import MAX_PASSPHRASE_BYTES, MAX_SSID_BYTES, Provisioner
from rmkit.provision.errors import (ChallengeDeclined, DeviceUnreachable, HandshakeFailed, MappingRefused,
                                    MappingUnavailable, ProtocolError, ProvisionError, TransportError, WifiJoinFailed)
from rmkit.provision.mapping import AUTO, CHALLENGE_RESPONSE, CHOICES, SECRET_KEY
from rmkit.provision.transport import HttpTransport, Transport, parse_host

log = logging.getLogger(__name__)

# The address of a real ESP32 on its own SoftAP (ESP-IDF default, docs/protocol.md 1.1). Only mentioned in --help and
# never used as a default: connecting there from a host that has not joined the board's access point would
# reach whatever else answers on that private address.
ESP32_SOFTAP_ADDRESS = "192.168.4.1:80"

EXIT_UNREACHABLE = 3
EXIT_HANDSHAKE = 4
EXIT_MAPPING_REFUSED = 5
EXIT_WIFI_FAILED = 6
EXIT_PROTOCOL = 7
EXIT_NOT_CONFIRMED = 8
EXIT_CLOUD = 9

DESCRIPTION = f"""\
Provision a node like Espressif's esp-rainmaker-cli does (docs/protocol.md 2.3): read its protocol version,
open a secure session (Security 0 or 1), send the user id and secret key (cloud_user_assoc), which
returns the node id, then send the Wi-Fi credentials and wait until the node has joined.

With --cloud-url, --email and --password it also does the client's cloud steps of the mapping
(steps 2 and 4 of the secret-key flow): logs in (the user id then comes from the login), sends the node id and secret
key to the cloud, and polls the request every 0.2 s until it is confirmed or timed out.

Challenge-response mapping (docs/protocol.md 7.1), when the node's proto-ver advertises
rmaker_extra cap ch_resp and a cloud is given (--mapping auto, the default), as Espressif's clients
choose: after the session, the cloud issues a challenge (mapping/initiate), the node signs it on
ch_resp, the cloud checks the signature with the node's certificate and maps the node
(mapping/verify); then the Wi-Fi credentials. Nothing is polled afterwards. --mapping ch_resp or
secret forces one flow.

The node id is printed on standard output (then `request_status <status>` with a cloud).
Progress lines go to standard error. The PoP, the passphrase, the password and the secret key are
never printed.
"""

EPILOG = f"""\
SoftAP: a virtual board serves on 127.0.0.1 at the port it prints. A real ESP32 in provisioning
mode serves on {ESP32_SOFTAP_ADDRESS}, reachable only after this computer has joined the board's
access point (PROV_xxxxxx); pass it explicitly with --host {ESP32_SOFTAP_ADDRESS}. There is no default.

BLE (--transport ble --device PROV_xxxxxx): a real board through this computer's Bluetooth (bleak);
a virtual board through its simulated radio with --hci tcp-client:127.0.0.1:PORT (the line `rmkit vboard`
and `rmkit sandbox` print); --hci usb:0 drives a USB Bluetooth controller with Bumble instead of the
operating system's stack.

Exit status: 0 provisioned; 2 bad arguments; {EXIT_UNREACHABLE} node unreachable; {EXIT_HANDSHAKE} session refused
(wrong PoP or security version); {EXIT_MAPPING_REFUSED} node refused the user mapping, declined to sign the
challenge, or does not offer the forced --mapping; {EXIT_WIFI_FAILED} node could not join Wi-Fi; {EXIT_PROTOCOL}
unexpected answer or connection lost; {EXIT_NOT_CONFIRMED} the cloud did not confirm the mapping; {EXIT_CLOUD} the
cloud refused (a challenge response, for one) or could not be reached.
"""


def register(sub) -> None:
    parser = sub.add_parser("provision", help="provision a node: user mapping + Wi-Fi, prints the node id",
                            description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=["softap", "ble"], default="softap",
                        help="how to reach the node: softap = protocomm over HTTP (default; needs --host), "
                             "ble = protocomm over Bluetooth LE GATT (needs --device)")
    parser.add_argument("--host", metavar="HOST:PORT",
                        help="softap: the node's HTTP address, e.g. 127.0.0.1:8080 for a virtual board, or "
                             f"{ESP32_SOFTAP_ADDRESS} for a real ESP32 once you are on its access point "
                             "(port defaults to 80)")
    parser.add_argument("--device", metavar="NAME|ADDRESS",
                        help="ble: the node's advertised name (PROV_ and the last 6 hex digits of its MAC) or its "
                             "Bluetooth address")
    parser.add_argument("--hci", metavar="SPEC",
                        help="ble: drive this HCI transport with Bumble instead of the operating system's Bluetooth: "
                             "tcp-client:127.0.0.1:PORT for a virtual board's radio, usb:0 for a USB controller")
    parser.add_argument("--scan-timeout", type=float, default=10.0,
                        help="ble: seconds to look for the device's advertisement (default 10)")
    parser.add_argument("--sec", choices=["0", "1", "auto"], default="1",
                        help="security version: 1 = X25519 + PoP + AES-CTR (default), 0 = no encryption "
                             "(credentials in clear), auto = whatever the node's proto-ver says. An explicit "
                             "version is never downgraded")
    parser.add_argument("--pop", default=os.environ.get("RMKIT_POP"),
                        help="proof of possession for Security 1 (on the board's label / factory data); "
                             "or set RMKIT_POP, which keeps it out of shell history and `ps`")
    parser.add_argument("--ssid", required=True, help=f"Wi-Fi network for the node (1..{MAX_SSID_BYTES} bytes)")
    parser.add_argument("--passphrase", default=os.environ.get("RMKIT_PASSPHRASE", ""),
                        help=f"Wi-Fi passphrase (at most {MAX_PASSPHRASE_BYTES} bytes; empty for an open network); "
                             "or set RMKIT_PASSPHRASE")
    parser.add_argument("--user-id", help="RainMaker user id the node will be mapped to "
                        "(not needed with --cloud-url: it comes from the login)")
    cloud = parser.add_argument_group("cloud steps (optional)")
    cloud.add_argument("--cloud-url", metavar="URL",
                       help="base URL of a RainMaker-compatible cloud, e.g. the local one: http://127.0.0.1:PORT")
    cloud.add_argument("--email", help="the account to map the node to")
    cloud.add_argument("--password", help="its password (or set RMKIT_PASSWORD)")
    cloud.add_argument("--mapping", choices=list(CHOICES), default=AUTO,
                       help="user-node mapping flow: auto = challenge-response when the node advertises ch_resp "
                            "and a cloud is given, else the secret key (default, as Espressif's clients choose); "
                            "ch_resp = challenge-response (needs --cloud-url); secret = the secret key on "
                            "cloud_user_assoc, then PUT and poll")
    cloud.add_argument("--mapping-wait", type=float, default=90.0,
                       help="seconds to keep polling the mapping request (default 90; the cloud times out at 60)")
    parser.add_argument("--secret-key", default=None,
                        help="secret shared with the cloud for the mapping; default: a fresh random UUID, "
                             "like Espressif's client")
    parser.add_argument("--show-secret-key", action="store_true",
                        help="also print the secret key (needed when you confirm the mapping with the cloud yourself)")
    parser.add_argument("--scan", action="store_true", help="ask the node to scan Wi-Fi first and list what it sees")
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="seconds to wait for each answer from the node (default 15)")
    parser.add_argument("--wifi-timeout", type=float, default=60.0,
                        help="seconds to wait for the node to join Wi-Fi (default 60)")
    parser.add_argument("--poll-interval", type=float, default=0.2,
                        help="seconds between Wi-Fi status polls (default 0.2; Espressif's client uses 5)")
    parser.set_defaults(func=run)


def _progress(line: str) -> None:
    print(f"provision: {line}", file=sys.stderr, flush=True)


def _open_transport(args):
    """A function opening the transport the arguments name, and what it reaches, checked before any step."""
    if args.transport == "ble":
        if args.host:
            raise UserError("--host is for --transport softap; over BLE name the node with --device PROV_xxxxxx")
        if not (args.device or "").strip():
            raise UserError("--transport ble needs --device: the node's advertised name (PROV_xxxxxx) or address")
        from rmkit.provision.ble import open_ble

        where = f"{args.device} over BLE" + (f" (Bumble on {args.hci})" if args.hci else "")
        return (lambda: open_ble(args.device, args.hci, args.timeout, args.scan_timeout)), where
    if args.device or args.hci:
        raise UserError("--device and --hci are for --transport ble")
    if not (args.host or "").strip():
        raise UserError(f"--host is {'missing' if args.host is None else 'empty'}: give the node's address as IP:PORT "
                        f"(make provision HOST=IP:PORT; {ESP32_SOFTAP_ADDRESS} once this computer has joined a board's "
                        "access point), or --transport ble --device PROV_xxxxxx (make provision DEVICE=PROV_xxxxxx)")
    try:
        host, port = parse_host(args.host)
    except ValueError as exc:
        raise UserError(f"--host: {exc}") from None
    return (lambda: HttpTransport(host, port, timeout=args.timeout)), f"{host}:{port}"


def run(args) -> int:
    open_transport, where = _open_transport(args)
    sec = None if args.sec == "auto" else int(args.sec)
    if sec == 1 and not args.pop:
        raise UserError("--pop is required with --sec 1 (use --sec auto for a node started without PoP)")
    if args.mapping == CHALLENGE_RESPONSE and not args.cloud_url:
        raise UserError("--mapping ch_resp needs --cloud-url, --email and --password: the cloud issues the "
                        "challenge and checks the node's signature")
    secret_key = args.secret_key or str(uuid.uuid4())
    cloud = None
    user_id = args.user_id
    if args.cloud_url:
        password = args.password or os.environ.get("RMKIT_PASSWORD")
        if not args.email or not password:
            raise UserError("--cloud-url needs --email and --password (or RMKIT_PASSWORD)")
        cloud = CloudClient(args.cloud_url)
        _progress(f"logging in to {args.cloud_url} as {args.email}")
        try:
            cloud_user = cloud.login(args.email, password)
        except CloudError as exc:
            return _fail(str(exc), EXIT_CLOUD)
        if user_id and user_id != cloud_user:
            raise UserError(f"--user-id {user_id} is not the logged-in user ({cloud_user}); leave it out")
        user_id = cloud_user
    if not user_id:
        raise UserError("no user id: give --user-id, or --cloud-url with --email and --password")

    _progress(f"connecting to {where}")
    try:
        transport: Transport
        with open_transport() as transport:
            provisioner = Provisioner(transport, sec=sec, pop=args.pop, poll_interval_s=args.poll_interval,
                                      wifi_timeout_s=args.wifi_timeout, progress=_progress)
            result = provisioner.provision(args.ssid, args.passphrase, user_id, secret_key, scan=args.scan,
                                           mapping=args.mapping, cloud=cloud)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    except DeviceUnreachable as exc:
        return _fail(f"node unreachable: {exc}", EXIT_UNREACHABLE)
    except HandshakeFailed as exc:
        return _fail(f"session refused: {exc}", EXIT_HANDSHAKE)
    except (MappingRefused, ChallengeDeclined, MappingUnavailable) as exc:
        return _fail(str(exc), EXIT_MAPPING_REFUSED)
    except CloudError as exc:  # challenge-response: initiate or verify refused, or the cloud unreachable
        return _fail(str(exc), EXIT_CLOUD)
    except WifiJoinFailed as exc:
        return _fail(f"{exc} (send a prov-ctrl reset or re-run with the right credentials)", EXIT_WIFI_FAILED)
    except (ProtocolError, TransportError) as exc:
        return _fail(f"provisioning failed: {exc}", EXIT_PROTOCOL)
    except ProvisionError as exc:
        return _fail(f"provisioning failed: {exc}", EXIT_PROTOCOL)

    _progress(f"done in {result.timings_s.get('total', 0):.2f} s (session {result.timings_s.get('handshake', 0) * 1000:.0f} ms)")
    if args.show_secret_key and result.mapping == SECRET_KEY:
        print(f"secret_key {secret_key}")
    print(f"node_id {result.node_id}", flush=True)
    if result.mapping == CHALLENGE_RESPONSE:  # the cloud mapped the node at verify: nothing to request or poll
        print("request_status confirmed")
        _progress(f"node {result.node_id} added to {args.email}'s account by challenge-response")
        return 0
    if cloud is None:
        return 0
    try:
        request_id = cloud.request_mapping(result.node_id, secret_key)
        _progress(f"mapping requested (request {request_id[:8]}...), polling every 0.2 s")
        outcome = cloud.wait_for_mapping(request_id, give_up_s=args.mapping_wait,
                                         on_status=lambda status: _progress(f"request_status {status}"))
    except CloudError as exc:
        return _fail(str(exc), EXIT_CLOUD)
    print(f"request_status {outcome.status}")
    if outcome.status != "confirmed":
        return _fail(f"the cloud did not confirm the mapping ({outcome.status} after {outcome.elapsed_s:.1f} s)",
                     EXIT_NOT_CONFIRMED)
    _progress(f"node {result.node_id} added to {args.email}'s account in {outcome.elapsed_s:.2f} s")
    return 0


def _fail(message: str, status: int) -> int:
    print(f"rmkit provision: {message}", file=sys.stderr)
    return status
