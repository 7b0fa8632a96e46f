"""`rmkit reset --wifi|--factory`: put a node back into provisioning, on a board's serial port or a virtual board.

--wifi forgets the Wi-Fi credentials and keeps the mapping state, as upstream's Wi-Fi reset does
(esp_rmaker_wifi_reset): the node is provisioned onto a network again and stays its user's.
--factory is the node's own factory reset (rmnode.node.factory_reset_from_repl): online, the node tells
the cloud first (docs/protocol.md 5.3), then forgets credentials and mapping state. Both reboot the
board, which then serves provisioning.

Both run the firmware's own code at the board's REPL through mpremote (as the board would from its
button or a script), so they need the firmware on the board. A virtual board that is not running is
changed on its flash directory instead, where only --wifi can be done: a factory reset must be able
to tell the cloud, which needs the node running.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from rmkit.deploy import SerialPort
from rmkit.errors import UserError

log = logging.getLogger(__name__)

WIFI_KEY = "wifi"  # firmware/rmnode/credentials.py WIFI_KEY, in /state.json
# reboot=False: mpremote reads the whole answer, then resets the board itself (`+ reset`)
WIFI_RESET = "from rmnode.reset import wifi_reset_from_repl\nprint('RESET', wifi_reset_from_repl(reboot=False))"
FACTORY_RESET = ("from rmnode.node import factory_reset_from_repl\n"
                 "print('RESET', factory_reset_from_repl(reboot=False))")
# the factory reset waits up to 5 s for the cloud (firmware/rmnode/online_reports.py RESET_TIMEOUT_MS), after joining
REPL_TIMEOUT_S = {"wifi": 30.0, "factory": 60.0}


def reset_over_serial(port: str, kind: str) -> bool:
    """Run the firmware's reset of `kind` ("wifi" or "factory") at the REPL on `port`, then reset the board.
    Returns what the firmware answered: credentials were stored (wifi), the cloud was told (factory)."""
    board = SerialPort(port)
    output = board.run(["exec", WIFI_RESET if kind == "wifi" else FACTORY_RESET, "+", "reset"],
                       timeout=REPL_TIMEOUT_S[kind])
    answer = [line.split()[1] for line in output.splitlines() if line.startswith("RESET ")]
    if not answer:
        if "ImportError" in output or "no module named" in output:
            raise UserError(f"{board.where} holds no rmnode firmware: deploy it first (make deploy)")
        last = output.strip().splitlines()[-1] if output.strip() else "no answer"
        raise UserError(f"{board.where} did not reset: {last}")
    return answer[0] == "True"


def forget_wifi_on_flash(flash: Path) -> bool:
    """--wifi on a virtual board that is not running: drop the credentials from its /state.json (the
    atomic write the firmware's store does: a temporary file, then a rename). True if there were any."""
    path = flash / "state.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except ValueError:
        raise UserError(f"{path} is not JSON: the node treats it as empty, so it provisions anyway") from None
    if not isinstance(state, dict) or WIFI_KEY not in state:
        return False
    del state[WIFI_KEY]
    tmp = path.with_name("state.json.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)
    return True


def _running_board(args: argparse.Namespace):
    """The runtime record of the virtual board the arguments name, or None for a stopped one (--flash)."""
    from rmkit.vboard import runtime
    from rmkit.vboard.errors import BoardError

    if args.name:
        try:
            record = runtime.read_record(runtime.check_name(args.name))
        except BoardError as exc:
            raise UserError(str(exc)) from None
        if record is None:
            raise UserError(f"no virtual board named {args.name!r} is running: start it (make vboard "
                            f"BOARD={args.name}), or give its flash directory with --flash (make reset FLASH=...)")
        return record
    return runtime.board_using_flash(args.flash)


def _cmd_reset(args: argparse.Namespace) -> int:
    kind = "wifi" if args.wifi else "factory"
    what = ("forgetting the Wi-Fi credentials (the mapping state stays)" if kind == "wifi" else
            "factory reset: the node tells the cloud if it gets online within 5 s, then forgets its credentials "
            "and mapping state")
    if args.port:
        from rmkit.serialport import resolve_port

        port = resolve_port(args.port)
    else:
        if args.flash and not Path(args.flash).is_dir():
            raise UserError(f"no virtual board's flash at {args.flash}")
        record = _running_board(args)
        if record is None:  # a stopped virtual board: its flash directory
            if kind == "factory":
                raise UserError(f"no board runs on {args.flash}: a factory reset must be able to tell the cloud, so "
                                f"start the board first (make vboard FLASH={args.flash}), then reset it")
            had = forget_wifi_on_flash(Path(args.flash))
            print(f"reset: {args.flash}: " + ("Wi-Fi credentials forgotten, mapping state kept; the board serves "
                                              "provisioning when it next starts" if had else
                                              "no Wi-Fi credentials stored; the board serves provisioning already"))
            return 0
        port = record["pty"]
        print(f"reset: board {record['name']} runs on {record['flash']}: through its port {port}", flush=True)
    print(f"reset: {what} on {port}", flush=True)
    answer = reset_over_serial(port, kind)
    if kind == "wifi":
        done = "credentials forgotten" if answer else "no credentials were stored"
    else:
        done = "reported to the cloud" if answer else "the cloud was not told (the node was not online within 5 s)"
    print(f"reset: done ({done}); the board reboots into provisioning", flush=True)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reset", help="put a node back into provisioning: --wifi (keeps its user) or --factory",
        description=__doc__.split("\n\n", 1)[1].replace("\n", " "),
        epilog="make reset WIFI=1 (or FACTORY=1) with BOARD=, FLASH= or PORT= runs the same.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--wifi", action="store_true",
                      help="forget the Wi-Fi credentials, keep the mapping state (upstream's Wi-Fi reset)")
    what.add_argument("--factory", action="store_true",
                      help="the node's factory reset: tell the cloud, forget credentials and mapping state")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="a board's serial port, e.g. /dev/ttyUSB0 (auto: the one ESP32 on USB)")
    where.add_argument("--name", help="a running virtual board's name (make vboard BOARD=...)")
    where.add_argument("--flash", help="a virtual board's flash directory (running or not)")
    p.set_defaults(func=_cmd_reset)
