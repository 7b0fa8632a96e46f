"""Local mosquitto broker with mutual TLS and per-node ACLs, run as a child process (never a system service).

The generated config (docs/protocol.md 5.1 stand-in): one TLS listener (127.0.0.1 unless told another
address, e.g. 0.0.0.0 for a real board on the LAN), `require_certificate`,
`use_identity_as_username` (the client certificate's CN is the user name, so a node is
identified by its certificate, not by the client id it claims), no anonymous access, and an
ACL where a node may only use `node/<its CN>/#` (and the basic-ingest form
`$aws/rules/<rule>/node/<its CN>/#`, docs/protocol.md 5.2) while the reader identities (the cloud, the test
harness) may read every node's topics.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import sys
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterable, Optional

from rmkit import REPO_ROOT, venv_tool
from rmkit.errors import UserError
from rmkit.net import free_port
from rmkit.pki import DEFAULT_PKI_DIR, Identity, Pki, check_name, cloud_identities, names_host, san_names

log = logging.getLogger(__name__)

# who may read every node's topics: the test harness and every cloud instance's identity
DEFAULT_READERS = ("harness", *cloud_identities())
MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")
_READY_LINE = b" running"  # "mosquitto version 2.0.11 running", logged once the listeners are open


class BrokerError(UserError):
    """mosquitto could not be started or died; the message points at its log."""


def _listening(port: int, host: str) -> bool:
    """True if another socket listens on host:port.

    Binds with SO_REUSEADDR like mosquitto does: after a restart the old connections sit in
    TIME_WAIT, which blocks a plain bind (rmkit.net.port_in_use) but not mosquitto.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise _not_here(host) from None
            return True
        return False


def _not_here(address: str) -> BrokerError:
    return BrokerError(f"cannot listen on {address}: it is not an address of this machine (see `ip -4 addr`); "
                       "0.0.0.0 listens on every interface")


def check_listen(address: str, knob: str = "--listen") -> str:
    """The IPv4 address a listener binds: 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or
    one interface's address; one line naming the knob otherwise."""
    try:
        return str(ipaddress.IPv4Address(address.strip()))
    except (ValueError, AttributeError):
        raise UserError(f"{knob} {address!r}: give an IPv4 address of this machine: 127.0.0.1 (the default, this "
                        "machine only), 0.0.0.0 (every interface) or one interface's address") from None


def connect_host(listen: str) -> str:
    """Where clients on this machine (the cloud, tests) reach a broker bound to `listen`."""
    return "127.0.0.1" if listen == "0.0.0.0" else listen


def exposure_warnings(listen: str, port: int, certificate) -> list[str]:
    """What to tell the user when the broker is bound beyond loopback: the LAN can reach it, and
    whether its certificate names an address a board could use."""
    if ipaddress.IPv4Address(listen).is_loopback:
        return []
    where = "every interface of this machine" if listen == "0.0.0.0" else listen
    lines = [f"warning: the broker listens on {where} (port {port}): other machines on your network can reach "
             "it (each still needs a client certificate from this PKI)"]
    names = san_names(certificate)
    outside = [name for name in names if name not in ("localhost", "127.0.0.1")]
    if listen != "0.0.0.0" and not names_host(certificate, listen):
        lines.append(f"warning: its certificate does not name {listen} ({', '.join(names)}): a board connecting "
                     f"there refuses it; run `{venv_tool('rmkit')} pki init --broker-host {listen}` and restart")
    elif listen == "0.0.0.0" and not outside:
        lines.append("warning: its certificate names only localhost and 127.0.0.1: a board refuses it; run "
                     f"`{venv_tool('rmkit')} pki init --broker-host <this machine's LAN address or name>` and restart")
    return lines


def find_mosquitto() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in MOSQUITTO_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError("mosquitto not found: run `make setup` (or `sudo apt-get install -y mosquitto`)")


def acl_text(readers: Iterable[str]) -> str:
    """The ACL file: nodes own node/<CN>/#, readers may read every node's topics."""
    lines = [
        "# generated by rmkit.broker; %u is the client certificate's CN (use_identity_as_username)",
        "pattern readwrite node/%u/#",
        "# docs/protocol.md 5.2: RainMaker's basic-ingest form of the same topics",
        "pattern write $aws/rules/+/node/%u/#",
        "",
    ]
    for reader in readers:
        check_name(reader, "reader name")
        lines += [f"user {reader}", "topic read node/#", "topic read $aws/rules/+/node/#", ""]
    return "\n".join(lines)


def config_text(port: int, ca: Path, identity: Identity, acl_path: Path, log_path: Path,
                listen: str = "127.0.0.1") -> str:
    lines = [
        "# generated by rmkit.broker",
        "per_listener_settings false",
        "allow_anonymous false",
        # Persistent sessions (the cloud's) and their queued QoS 1 mapping publishes survive a broker
        # restart; saved on every change, which is cheap for a local broker.
        "persistence true",
        f"persistence_location {log_path.parent}/",
        "autosave_interval 1",
        "autosave_on_changes true",
        # A queue limit no backlog reaches: mosquitto drops QoS 1 messages beyond 1000 queued per client
        # by default, and what it drops for the cloud's session are mappings the nodes already had a
        # PUBACK for. Not 0 ("no limit"): with 0, mosquitto 2.0.11 drops a client's connection after
        # refusing one of its publishes (measured). No per-client limits in 2.0.11; the nodes never
        # subscribe, so only the readers (the cloud and the harness) ever have a queue.
        "max_queued_messages 10000000",
        "max_queued_bytes 0",
        f"acl_file {acl_path}",
        # a log file is flushed per line; stdout into a file would be block-buffered
        f"log_dest file {log_path}",
        "log_type all",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "connection_messages true",
        f"listener {port} {listen}",
        f"cafile {ca}",
        f"certfile {identity.cert_pem}",
        f"keyfile {identity.key_pem}",
        "require_certificate true",
        "use_identity_as_username true",
        # ... and the client id is the user name too, whatever the client sends: a certificate can only
        # ever be its own session, so node A's certificate cannot take node B's (or the cloud's) client
        # id and knock that client off
        "use_username_as_clientid true",
        "tls_version tlsv1.2",
    ]
    if os.geteuid() == 0:
        # Started as root, mosquitto drops privileges to user `mosquitto`, which then cannot read the
        # 0600 keys nor enter pytest's 0700 tmp dirs ("Unable to open acl_file"). It is a child
        # process (on loopback unless told otherwise), so keeping root is the smaller evil than
        # loosening key modes.
        lines.append("user root")
    return "\n".join(lines) + "\n"


class Broker:
    """mosquitto on `listen`:`port` (127.0.0.1 and a free port by default), configured from `pki`; a
    context manager. `host` is where clients on this machine reach it."""

    def __init__(self, pki: Pki, workdir: Path | str, port: int = 0, readers: Iterable[str] = DEFAULT_READERS,
                 server_identity: Optional[Identity] = None, listen: str = "127.0.0.1") -> None:
        self.pki = pki
        self.workdir = Path(workdir)
        self.listen = check_listen(listen)
        self.host = connect_host(self.listen)
        try:
            self.port = port or free_port(self.listen)
        except OSError:
            raise _not_here(self.listen) from None
        self.readers = tuple(readers)
        self.identity = server_identity or pki.broker_identity()
        self.config_path = self.workdir / "mosquitto.conf"
        self.acl_path = self.workdir / "mosquitto.acl"
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: Optional[subprocess.Popen] = None
        self._log_file = None
        self._started_before = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> "Broker":
        """Start mosquitto and return once it listens (its log says "running" and the port is taken)."""
        if self.running:
            return self
        if _listening(self.port, self.listen):
            raise BrokerError(f"port {self.port} on {self.listen} is in use: pick another one")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.acl_path.write_text(acl_text(self.readers))
        self.config_path.write_text(config_text(self.port, self.pki.ca_pem, self.identity, self.acl_path, self.log_path,
                                                self.listen))
        if not self._started_before and self.log_path.exists():
            self.log_path.unlink()  # a fresh log per Broker object; restarts append to it
        self._started_before = True
        start_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_file = open(self.log_path, "ab")
        self._proc = subprocess.Popen([find_mosquitto(), "-c", str(self.config_path)],
                                      stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                self._close_log()
                raise BrokerError(f"mosquitto exited with status {self._proc.returncode}: "
                                  f"{self._log_tail(start_offset)} (log: {self.log_path})")
            if self._ready(start_offset):
                break
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(f"mosquitto did not start within {timeout:.0f} s (log: {self.log_path})")
            time.sleep(0.02)
        log.info("mosquitto (pid %d) listening on %s:%d", self._proc.pid, self.listen, self.port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` s. Safe to call twice."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self.resume()  # a stopped process would not handle SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        self._close_log()

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without closing connections cleanly (crash tests)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._proc = None
        self._close_log()

    def restart(self, timeout: float = 10.0) -> "Broker":
        """Stop (if running) and start again on the same port; the log keeps growing."""
        self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered (no PUBACK, no PINGRESP)."""
        if self.running:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- log ------------------------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _ready(self, offset: int) -> bool:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return _READY_LINE in f.read()

    def _log_tail(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) or "no output"

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


# -- CLI ----------------------------------------------------------------------------------------

def _cmd_broker(args) -> int:
    listen = check_listen(args.listen)
    pki = Pki(args.pki_dir)
    broker = Broker(pki, args.workdir, port=args.port, readers=args.reader or DEFAULT_READERS, listen=listen)
    for reader in args.reader or ("cloud", "harness"):  # the other cloud slots get theirs when they start
        pki.client_identity(reader)
    print(f"broker: starting mosquitto (log {broker.log_path})", flush=True)
    with broker:
        print(f"broker: listening on {broker.listen}:{broker.port} (mutual TLS; certificate for "
              f"{', '.join(san_names(broker.identity.certificate()))})")
        for line in exposure_warnings(broker.listen, broker.port, broker.identity.certificate()):
            print(f"broker: {line}", file=sys.stderr, flush=True)
        print(f"broker: CA {pki.ca_pem} (board: {pki.ca_der})")
        shown = ", ".join(args.reader) if args.reader else "harness, cloud, cloud-1 ... cloud-%d" % (len(DEFAULT_READERS) - 2)
        print(f"broker: readers {shown}; nodes may use node/<CN>/#; client id = certificate CN; Ctrl-C stops",
              flush=True)
        try:
            while broker.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("broker: stopping")
            return 0
    print(f"broker: mosquitto exited unexpectedly, see {broker.log_path}")
    return 1


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "broker", help="run the local mosquitto broker with mutual TLS (foreground)",
        description="Run mosquitto with a TLS listener (on 127.0.0.1 unless --listen) that requires client "
        "certificates from the local PKI (`rmkit pki init`); a node may only publish under node/<its certificate "
        "CN>/, the reader identities may read all node topics. For a real board, listen where it can reach the "
        "broker and name that address in the certificate (`rmkit pki init --broker-host`). Stops on Ctrl-C.")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    parser.add_argument("--listen", default="127.0.0.1", metavar="ADDR",
                        help="IPv4 address to listen on: 127.0.0.1 (default, this machine only), 0.0.0.0 (every "
                        "interface: other machines on the network can reach it) or one interface's address")
    parser.add_argument("--pki-dir", default=str(DEFAULT_PKI_DIR), help="PKI directory (default: %(default)s)")
    parser.add_argument("--workdir", default=str(REPO_ROOT / "build" / "broker"),
                        help="where the config, ACL and log go (default: %(default)s)")
    parser.add_argument("--reader", action="append", metavar="NAME",
                        help="identity allowed to read node/# (repeatable; default: cloud, harness)")
    parser.set_defaults(func=_cmd_broker)
