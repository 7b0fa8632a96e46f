"""One more HTTP process of a CloudService: the same REST app, on the parent's listening socket, over the same database.

One CPython process runs one thread at a time, and at a thousand clients the REST side alone keeps
one busy (the scale benchmark, rmkit.benchmarks.scale). So CloudService(http_processes=N) starts
N-1 of these beside itself. Each inherits the parent's listening socket (the kernel hands every new
connection to whichever process accepts first) and opens the database itself: reads are WAL
snapshots, writes queue on the storage's lock file, token checks see other processes' logouts
through the revocation epoch (rmkit.cloud.storage). The MQTT side stays in the parent, alone.

Started by the parent as `python -m rmkit.cloud.http_worker` with a JSON line of settings on stdin;
prints `ready` on stdout once it serves; sends its log records to the parent as JSON lines on stderr
(the parent logs them as its own, so cloud.log stays one file); ends when its stdin closes, which is
also what happens when the parent dies, however it dies.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import traceback

LOG_NAMES = ("rmkit.cloud", "rmkit.cloud.api", "rmkit.cloud.mapping", "rmkit.cloud.accounts", "rmkit.cloud.storage",
             "rmkit.cloud.nodes")


class _JsonLines(logging.Handler):
    """Each record as one JSON line (a traceback stays inside its record)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            sys.stderr.write(json.dumps({"level": record.levelno, "name": record.name, "message": text}) + "\n")
            sys.stderr.flush()
        except Exception:  # logging must never take a request down
            self.handleError(record)


def relay_log_line(line: str, worker: int) -> None:
    """In the parent: log one line a worker wrote on stderr, under the worker's logger name."""
    try:
        record = json.loads(line)
        logging.getLogger(record["name"]).log(record["level"], "%s", record["message"])
    except (ValueError, KeyError, TypeError):  # not one of our records: a crash before logging was set up
        logging.getLogger("rmkit.cloud").warning("HTTP process %d: %s", worker, line.rstrip())


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the parent dies (prctl PR_SET_PDEATHSIG), so a
    SIGKILLed cloud does not leave the listening socket open in here; stdin's EOF covers the rest."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> None:
    _die_with_parent()
    settings = json.loads(sys.stdin.readline())
    handler = _JsonLines()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in LOG_NAMES:
        logging.getLogger(name).setLevel(settings["log_level"])

    from waitress.server import create_server

    from rmkit.cloud.accounts import Accounts, LoginLimits
    from rmkit.cloud.api import create_app
    from rmkit.cloud.challenge_mapping import ChallengeService
    from rmkit.cloud.mapping import MappingService
    from rmkit.cloud.node_registry import node_registry
    from rmkit.cloud.storage import open_storage

    listener = socket.socket(fileno=settings["fd"])
    storage = open_storage(settings["db"])
    accounts = Accounts(storage, token_ttl_s=settings["token_ttl"], login_limits=LoginLimits(**settings["login_limits"]))
    mapping = MappingService(storage, timeout_s=settings["mapping_timeout"])
    challenges = ChallengeService(storage, node_registry(settings.get("pki_dir")))
    server = create_server(create_app(accounts, mapping, challenges), sockets=[listener], threads=settings["threads"],
                           ident="rmkit-cloud", clear_untrusted_proxy_headers=True)

    def until_parent_goes() -> None:
        sys.stdin.read()  # EOF: the parent stopped us, or died
        os._exit(0)  # a request cut short is retried by its client; anything committed is on disk

    threading.Thread(target=until_parent_goes, name="parent-watch", daemon=True).start()
    print("ready", flush=True)
    server.run()


if __name__ == "__main__":
    main()
