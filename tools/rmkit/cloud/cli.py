"""`rmkit cloud serve|add-user|list-users`: run the local cloud and manage its users."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from rmkit import REPO_ROOT, venv_tool
from rmkit.errors import UserError

DEFAULT_DB = REPO_ROOT / "build" / "cloud.db"  # build/ is gitignored
DEFAULT_PKI = REPO_ROOT / "pki"


def _serve(args) -> int:
    from rmkit.cloud.accounts import LoginLimits
    from rmkit.cloud.mqtt import MqttSettings
    from rmkit.cloud.service import CloudService

    # one line per request and per mapping state change, even without -v
    for name in ("rmkit.cloud", "rmkit.cloud.api", "rmkit.cloud.mapping", "rmkit.cloud.mqtt",
                 "rmkit.cloud.accounts"):
        logging.getLogger(name).setLevel(logging.INFO)
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    mqtt = None
    if not args.no_mqtt:
        if not args.broker_port:
            raise UserError("give --broker-port (and --pki) for the MQTT side, or --no-mqtt")
        if not Path(args.pki).is_dir():
            raise UserError(f"no PKI at {args.pki}: run `{venv_tool('rmkit')} pki init` first, or pass --pki DIR")
        if args.session_expiry < 0 or args.session_expiry > 0xFFFFFFFF:
            raise UserError(f"--session-expiry {args.session_expiry} is out of range (0 .. 4294967295 s)")
        mqtt = MqttSettings.from_pki(args.pki, args.broker_host, args.broker_port,
                                     session_expiry_s=args.session_expiry)
    if not 1 <= args.http_processes <= 64:
        raise UserError(f"--http-processes {args.http_processes}: give 1 to 64")
    if args.login_attempts < 1 or not 0 < args.login_window <= 86400:
        raise UserError("--login-attempts must be 1 or more and --login-window 0 to 86400 s")
    limits = LoginLimits(per_user=args.login_attempts, per_address=6 * args.login_attempts,
                         window_s=args.login_window)
    # the PKI also holds the nodes' certificates, which challenge-response mapping checks signatures with
    service = CloudService(args.db, host=args.host, port=args.port, mapping_timeout=args.mapping_timeout,
                           token_ttl=args.token_ttl, mqtt=mqtt, login_limits=limits,
                           http_processes=args.http_processes, pki_dir=args.pki)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        service.start()
    except (ConnectionError, RuntimeError, ValueError) as exc:  # broker unreachable, no free session slot
        raise UserError(str(exc)) from None
    except OSError as exc:  # bind failed. No pre-check: a restart must reuse a port left in TIME_WAIT
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}; pick another --port") from None
    print(f"cloud: listening on {service.base_url} (REST under /v1/), db {args.db}"
          + (f", broker {args.broker_host}:{args.broker_port} as {service.client_id}" if mqtt else ", no MQTT"),
          flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
        print("cloud: stopped", flush=True)
    return 0


def _add_user(args) -> int:
    from rmkit.cloud.accounts import AccountError, Accounts
    from rmkit.cloud.storage import open_storage

    password = args.password
    if password is None:
        password = sys.stdin.readline().rstrip("\n")
    storage = open_storage(args.db)
    try:
        user_id = Accounts(storage).add_user(args.email, password)
    except AccountError as exc:
        raise UserError(str(exc)) from None
    finally:
        storage.close()
    print(f"cloud: user {args.email.lower()} added, user_id {user_id}")  # user names are case-insensitive
    return 0


def _list_users(args) -> int:
    from rmkit.cloud.accounts import Accounts
    from rmkit.cloud.storage import open_storage

    storage = open_storage(args.db)
    try:
        users = Accounts(storage).list_users()
    finally:
        storage.close()
    for user in users:
        print(f"{user.user_id}  {user.email}")
    if not users:
        print(f"cloud: no users (add one with `{venv_tool('rmkit')} cloud add-user EMAIL --password P`)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cloud", help="local RainMaker-compatible cloud: REST API + MQTT user-node mapping",
        description="A local stand-in for RainMaker's cloud. Clients (esp-rainmaker-cli with "
        "`profile add NAME --base-url http://127.0.0.1:PORT`) log in, PUT user/nodes/mapping and poll it; "
        "nodes publish node/<id>/user/mapping over mutual-TLS MQTT; the cloud confirms a request when "
        "both agree within the mapping timeout. Or, challenge-response: the client gets a challenge "
        "(POST user/nodes/mapping/initiate), the node signs it, and the cloud maps the node when the "
        "signature verifies with the node's certificate (POST user/nodes/mapping/verify). State lives in "
        "a SQLite file.")
    sub = parser.add_subparsers(dest="cloud_command", metavar="ACTION")
    sub.required = True

    def db_arg(p):
        p.add_argument("--db", default=str(DEFAULT_DB),
                       help=f"SQLite database file (created with its schema if missing; default {DEFAULT_DB})")

    serve = sub.add_parser("serve", help="run the cloud in the foreground (Ctrl-C stops)",
                           description="Serve the REST API under http://HOST:PORT/v1/ and consume the "
                           "nodes' mapping publishes. Logs one line per request and per mapping state "
                           "change; never tokens, passwords or secret keys.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="TCP port (default: a free one, printed)")
    db_arg(serve)
    serve.add_argument("--mapping-timeout", type=float, default=60.0, metavar="S",
                       help="seconds a mapping request waits for the node's publish (default 60, docs/protocol.md 6)")
    serve.add_argument("--token-ttl", type=int, default=3600, metavar="S",
                       help="lifetime of access/id tokens in seconds (default 3600)")
    serve.add_argument("--broker-host", default="127.0.0.1", help="MQTT broker host (default 127.0.0.1)")
    serve.add_argument("--broker-port", type=int, default=0, help="MQTT broker TLS port")
    serve.add_argument("--pki", default=str(DEFAULT_PKI),
                       help=f"PKI directory with the CA; each instance uses (or issues) the client identity of its slot: "
                       f"cloud, cloud-1, ... = its MQTT client id and session. Challenge-response mapping checks "
                       f"nodes' signatures with the node certificates this CA issued there, also with --no-mqtt "
                       f"(default {DEFAULT_PKI})")
    serve.add_argument("--login-attempts", type=int, default=5, metavar="N",
                       help="failed logins allowed per user name within --login-window (6 times as many per "
                       "client address); past that, logins get 429 with Retry-After (default 5)")
    serve.add_argument("--login-window", type=float, default=60.0, metavar="S",
                       help="the window, in seconds, failed logins are counted over (default 60)")
    serve.add_argument("--session-expiry", type=int, default=7 * 24 * 3600, metavar="S",
                       help="seconds the broker keeps the session and its queued publishes after the cloud "
                       "disconnects (default 604800 = 7 days; 0 = no persistent session, publishes sent "
                       "while the cloud is down are lost)")
    serve.add_argument("--http-processes", type=int, default=1, metavar="N",
                       help="processes serving the REST API on one port and database, this one included "
                       "(default 1; make cloud and make sandbox use two per core, which a thousand clients "
                       "mapping at once need)")
    serve.add_argument("--no-mqtt", action="store_true", help="REST only, no broker connection")
    serve.set_defaults(func=_serve)

    add = sub.add_parser("add-user", help="add a user (email + password)",
                         description="Add a user who can log in with `esp-rainmaker-cli login`. The password "
                         "is stored as a salted scrypt hash. Without --password it is read from stdin.")
    add.add_argument("email", help="the user name (an email address)")
    add.add_argument("--password", help="at least 8 characters (default: read one line from stdin)")
    db_arg(add)
    add.set_defaults(func=_add_user)

    users = sub.add_parser("list-users", help="list users (user id and email)")
    db_arg(users)
    users.set_defaults(func=_list_users)
