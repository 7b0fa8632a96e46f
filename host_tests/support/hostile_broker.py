"""A broker that breaks MQTT 3.1.1 on purpose, in front of a real one: for the node's client hardening tests.

`HostileBroker(pki, upstream_port, scripts)` listens on 127.0.0.1. Its n-th connection gets the n-th
script: TLS as the broker (the PKI's broker certificate, client certificates required, as mosquitto),
the client's CONNECT read, then the script's bytes written (a header announcing 256 MiB, a packet with
reserved flags, ...), then it waits for the client to hang up and records how long that took. Every
connection after the scripts is piped unchanged to the real broker on `upstream_port`, so a client that
dropped the hostile connection and reconnected reaches mosquitto and publishes.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from rmkit.pki import Pki

log = logging.getLogger(__name__)

CONNACK = b"\x20\x02\x00\x00"  # accepted, no session present (§3.2)
HANG_UP_WAIT_S = 15.0  # longer than any client's reaction; far shorter than a keepalive


@dataclass
class Served:
    """What happened on one connection the broker served."""

    script: Optional[bytes]  # None: piped to the real broker
    connect_seen: bool = False
    hung_up_after_s: Optional[float] = None  # from the script's last byte to the client's hang-up
    error: Optional[str] = None
    done: threading.Event = field(default_factory=threading.Event)


class HostileBroker:
    def __init__(self, pki: Pki, upstream_port: int, scripts: list[bytes]) -> None:
        self.upstream_port = upstream_port
        self.scripts = list(scripts)
        self.served: list[Served] = []
        identity = pki.broker_identity()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(identity.cert_pem), str(identity.key_pem))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(pki.ca_pem))
        self._context = context
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cond = threading.Condition()

    def start(self) -> "HostileBroker":
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way (close alone does not)
        except OSError:
            pass
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def wait_served(self, count: int, timeout: float = 30.0) -> list[Served]:
        """The first `count` connections, once each is over (the client hung up, or the wait ran out)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.served) >= count, timeout):
                raise AssertionError(f"the hostile broker served {len(self.served)} of {count} connections "
                                     f"within {timeout} s")
        for served in self.served[:count]:
            if served.script is not None and not served.done.wait(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"connection with script {served.script.hex()} still open after {timeout} s")
        return self.served[:count]

    # ---- internals ---------------------------------------------------------------------------------

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="hostile-broker")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                index = len(self.served)
                served = Served(self.scripts[index] if index < len(self.scripts) else None)
                self.served.append(served)
                self._cond.notify_all()
            self._spawn(self._serve if served.script is not None else self._pipe, conn, served)

    def _serve(self, conn: socket.socket, served: Served) -> None:
        sent_at = None
        try:
            conn.settimeout(HANG_UP_WAIT_S)
            with self._context.wrap_socket(conn, server_side=True) as tls:
                _read_packet(tls)  # the client's CONNECT
                served.connect_seen = True
                tls.sendall(served.script)
                sent_at = time.monotonic()
                while tls.recv(4096):  # the client's PUBLISHes, PINGREQs: read and dropped
                    pass
                served.hung_up_after_s = time.monotonic() - sent_at
        except (ConnectionError, ssl.SSLError) as exc:  # a client that aborts resets or cuts the TLS stream
            if sent_at is not None:
                served.hung_up_after_s = time.monotonic() - sent_at
            else:
                served.error = f"{type(exc).__name__}: {exc}"
        except (OSError, EOFError) as exc:  # socket.timeout included: the client never hung up
            served.error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
            served.done.set()
            log.info("hostile broker: script %s -> %s", served.script.hex(),
                     served.error or f"hung up after {served.hung_up_after_s:.2f} s")

    def _pipe(self, conn: socket.socket, served: Served) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError as exc:
            served.error = f"upstream: {exc}"
            conn.close()
            served.done.set()
            return
        selector = selectors.DefaultSelector()
        selector.register(conn, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, conn)
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(0.5):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            pass
        finally:
            selector.close()
            conn.close()
            upstream.close()
            served.done.set()


def _read_exactly(tls: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = tls.recv(n - len(data))
        if not chunk:
            raise EOFError("client closed before its CONNECT")
        data += chunk
    return data


def _read_packet(tls: ssl.SSLSocket) -> bytes:
    first = _read_exactly(tls, 1)
    length, shift = 0, 0
    while True:
        byte = _read_exactly(tls, 1)[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return first + _read_exactly(tls, length)
