"""`rmkit sandbox`: mosquitto, the local cloud and one unprovisioned virtual board, kept running for any
client to try (our CLI, Espressif's esp-rainmaker-cli, a phone app's logic in a script).

Prints what a client needs, then, for scripts, the same once as one line:
`SANDBOX {"softap": ..., "pop": ..., "sec": ..., "ssid": ..., "passphrase": ..., "cloud_url": ...,
"user": ..., "password": ..., "pid": ...}` when everything is ready (with --transport ble, "ble_device" and
"ble_hci" instead of "softap": the board's name and the HCI transport a Bumble central reaches its radio on; with
--transport both, all three). Ctrl-C (or SIGTERM) stops everything; SIGHUP restarts the broker, SIGUSR1 kills it (SIGKILL) and starts it again, its
persistence kept, so fault tests can be run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

from rmkit import REPO_ROOT, venv_tool
from rmkit.broker import check_listen, exposure_warnings
from rmkit.errors import UserError
from rmkit.pki import san_names
from rmkit.factory import USER_MAPPINGS
from rmkit.stack import Stack, check_heap, fresh_workdir
from rmkit.vboard import runtime
from rmkit.vboard.cpu_speed import CPU_HELP, CPU_MODELS
from rmkit.vboard.errors import BoardError
from rmkit.vboard.node_start import NodeDidNotStart, wait_for_node

DEFAULT_WORKDIR = REPO_ROOT / "build" / "sandbox"
SANDBOX_USER = "sandbox@example.com"


def _role(args: argparse.Namespace) -> str:
    """What this run is to the user: `make cloud` (--no-board) is the broker and the cloud, not a sandbox."""
    return "cloud" if args.no_board else "sandbox"


def _cmd_sandbox(args: argparse.Namespace) -> int:
    check_heap(args.heap, "--heap (make sandbox HEAP=)")  # before anything is started or any directory emptied
    check_listen(args.broker_listen, "--broker-listen (make cloud BROKER_LISTEN=)")
    workdir = Path(args.workdir)
    lock = workdir.with_name(workdir.name + ".pid")
    if lock.exists() and _alive(lock):
        raise UserError(f"a {_role(args)} is already running in {workdir} (pid {lock.read_text().strip()}); "
                        f"stop it, or give another --workdir (make {_role(args)} WORKDIR=...)")
    if not args.no_board:
        try:
            running = runtime.read_record(runtime.check_name(args.board))
        except BoardError as exc:
            raise UserError(f"--board: {exc}") from None
        if running:
            other = _other_name(args.board)
            raise UserError(f"a board named {args.board} is already running (pid {running['pid']}); stop it, "
                            f"or name this sandbox's board another way: make sandbox WORKDIR={workdir} BOARD={other} "
                            f"({venv_tool('rmkit')} sandbox --board {other})")
    fresh_workdir(workdir)
    lock.write_text(str(os.getpid()))
    try:
        return _run_sandbox(args, workdir)
    finally:
        lock.unlink(missing_ok=True)


def _other_name(board: str) -> str:
    """A board name no running board has, to suggest: the name with the first free number after it."""
    for number in range(2, 100):
        name = f"{board}{number}"
        try:
            if runtime.read_record(runtime.check_name(name)) is None:
                return name
        except BoardError:
            break
    return f"{board}-2"


def _alive(lock: Path) -> bool:
    try:
        os.kill(int(lock.read_text().strip()), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _run_sandbox(args: argparse.Namespace, workdir: Path) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # broker restarts on request, for fault tests by hand or by script; done by the main loop
    restart_requests: list[str] = []
    signal.signal(signal.SIGHUP, lambda *_: restart_requests.append("graceful"))
    signal.signal(signal.SIGUSR1, lambda *_: restart_requests.append("SIGKILL"))
    password = args.password or secrets.token_hex(6)
    with Stack(workdir, mapping_timeout=args.mapping_timeout, cloud_port=args.cloud_port, heap=args.heap,
               broker_listen=args.broker_listen, broker_port=args.broker_port, pki_dir=args.pki_dir,
               cpu=args.cpu) as stack:
        stack.add_user(SANDBOX_USER, password)
        info = {"cloud_url": stack.cloud.base_url, "user": SANDBOX_USER, "password": password,
                "broker": f"{stack.broker.host}:{stack.broker.port}", "broker_listen": stack.broker.listen,
                "ca": str(stack.pki.ca_pem),
                "pki": str(stack.pki.directory), "sntp": f"{stack.sntp.host}:{stack.sntp.port}",
                "pid": os.getpid()}
        board = None
        reaches: list[str] = []  # the `rmkit provision` arguments of each way to the board
        if not args.no_board:
            board = stack.add_board(args.board, softap=args.softap, transport=args.transport,
                                    user_mapping=args.user_mapping)
            _wait_for_provisioning(board, args.heap)
            host, port = board.softap
            ways = []
            if args.transport != "ble":
                info["softap"] = f"{host}:{port}"
                ways.append(f"SoftAP HTTP at {host}:{port}")
                reaches.append(f"--host {host}:{port}")
            if args.transport != "softap":
                info.update({"ble_device": board.service_name, "ble_hci": board.ble_hci})
                ways.append(f"BLE as {board.service_name}, simulated radio at {board.ble_hci}")
                reaches.append(f"--transport ble --device {board.service_name} --hci {board.ble_hci}")
            where = " and ".join(ways)
            info.update({"pop": board.pop, "sec": 1, "ssid": stack.ssid, "passphrase": stack.passphrase})
            runtime.record_board(board)  # so `make repl BOARD=` and `rmkit repl --name` find it
        role = _role(args)
        print(f"{role} ready (everything on this machine; logs in {workdir}):")
        print(f"  cloud       {stack.cloud.base_url} (REST under /v1/), user {SANDBOX_USER} password {password}")
        print(f"  broker      {stack.broker.host}:{stack.broker.port} (mutual TLS; PKI in {stack.pki.directory}"
              + (f"; listening on {stack.broker.listen}, certificate for "
                 f"{', '.join(san_names(stack.broker.identity.certificate()))})"
                 if stack.broker.listen != stack.broker.host else ")"))
        for line in exposure_warnings(stack.broker.listen, stack.broker.port, stack.broker.identity.certificate()):
            print(f"{role}: {line}", file=sys.stderr, flush=True)
        print(f"  time        SNTP on udp {stack.sntp.host}:{stack.sntp.port} (boards power on at 2000-01-01)")
        if board is not None:
            print(f"  node        {board.node_id}, provisioning over {where}, Security 1, PoP {board.pop}")
            print(f"  Wi-Fi       simulated network '{stack.ssid}', passphrase {stack.passphrase}")
            if board.cpu_speed is not None:
                print(f"  CPU         {board.cpu_speed.describe()}")
            print(f"  serial      any of these (Ctrl-] leaves):\n"
                  f"    {venv_tool('mpremote')} connect {shlex.quote(str(board.pty_link))} resume repl\n"
                  f"    make repl BOARD={board.name}\n"
                  f"    {venv_tool('rmkit')} repl --name {board.name}")
            for number, reach in enumerate(reaches):
                print(("  try:" if number == 0 else "  or over BLE:")
                      + "\n    %s provision %s --pop %s --ssid %s --passphrase %s \\\n"
                      "      --cloud-url %s --email %s --password %s"
                      % (venv_tool("rmkit"), reach, board.pop, stack.ssid, stack.passphrase, stack.cloud.base_url,
                         SANDBOX_USER, password))
        print(f"  restarts    kill -HUP {os.getpid()} restarts the broker, kill -USR1 {os.getpid()} kills it "
              "(SIGKILL) and starts it again; its sessions and queued messages are kept")
        print("SANDBOX " + json.dumps(info), flush=True)
        print("Ctrl-C stops everything.", flush=True)
        try:
            while not stop.wait(0.2):
                while restart_requests:
                    _restart_broker(stack, restart_requests.pop(0), role)
                if board is not None and not board.running:
                    print("sandbox: the board's MicroPython process is gone; see", board.serial_log, flush=True)
                    return 1
        except KeyboardInterrupt:
            pass
        finally:
            if board is not None:
                runtime.remove_record(board.name, os.getpid())
    print(f"{role}: stopped", flush=True)
    return 0


def _wait_for_provisioning(board, heap: Optional[str]) -> None:
    """The board's node in provisioning, or one line with the error its firmware stopped on, as soon as it did."""
    try:
        wait_for_node(board, r"state: provisioning", timeout=30)
    except NodeDidNotStart as exc:
        hint = ""
        if exc.error and exc.error.startswith("MemoryError") and heap:
            hint = f"; {heap} is too small a heap for the firmware: give more (HEAP=110K) or none for an ESP32's"
        raise UserError(f"{exc}{hint}") from None


def _restart_broker(stack: Stack, how: str, role: str) -> None:
    if how == "SIGKILL":
        stack.broker.kill()
    else:
        stack.broker.stop()
    stack.broker.start()
    print(f"{role}: broker restarted ({how}), pid {stack.broker.pid}", flush=True)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sandbox", help="broker + cloud + one unprovisioned virtual board, until Ctrl-C (make sandbox)",
        description="Start mosquitto, the local cloud (with a ready user) and one unprovisioned virtual board, "
                    "print how any client reaches them, and keep running until Ctrl-C. The sandbox is a "
                    "development aid: it prints the test user's password and the board's PoP on purpose. "
                    "Inside a private network namespace, --softap 192.168.4.1:80 puts the node where "
                    "Espressif's esp-rainmaker-cli looks for a SoftAP node.")
    p.add_argument("--softap", metavar="HOST:PORT",
                   help="where the node serves provisioning (default 127.0.0.1 and a free port)")
    p.add_argument("--transport", choices=("softap", "ble", "both"), default="softap",
                   help="how the board serves provisioning: softap (HTTP, default), ble (GATT on its simulated "
                   "radio; the printed line says how to reach it) or both")
    p.add_argument("--user-mapping", choices=USER_MAPPINGS, default="both",
                   help="how the board maps its user: both (default: challenge-response advertised, secret key still "
                   "served), ch_resp or secret (Espressif's clients then use the secret-key flow)")
    p.add_argument("--cloud-port", type=int, default=0, help="the cloud's port (default: a free one)")
    p.add_argument("--mapping-timeout", type=float, default=60.0, help="seconds before a request times out")
    p.add_argument("--password", help="the test user's password (default: random, printed)")
    p.add_argument("--board", default="vb-sandbox", help="the board's name (its MAC and node id derive from it)")
    p.add_argument("--heap", help="the firmware's GC heap: omit it for an ESP32's (56 KiB at boot, "
                   "growing into ESP-IDF's heap as on ESP32_GENERIC); 110K: a fixed heap of that many "
                   "64-bit bytes, no growth")
    p.add_argument("--cpu", choices=CPU_MODELS, help=CPU_HELP)
    p.add_argument("--no-board", action="store_true", help="only the broker and the cloud (make cloud)")
    p.add_argument("--broker-listen", default="127.0.0.1", metavar="ADDR",
                   help="the broker's IPv4 address: 127.0.0.1 (default, this machine only), 0.0.0.0 or one "
                   "interface's address for a real board on the network (a warning says the network can reach it)")
    p.add_argument("--broker-port", type=int, default=0, help="the broker's port (default: a free one)")
    p.add_argument("--pki-dir", help="the PKI (default: a new one in the workdir); a real board's factory data and "
                   "the broker must come from the same one (make cloud uses the repository's pki/)")
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="where logs go (emptied first)")
    p.set_defaults(func=_cmd_sandbox)
