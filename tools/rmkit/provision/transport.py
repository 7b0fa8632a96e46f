"""Protocomm transports on the host: send (endpoint, request bytes), get response bytes.

`Transport` is the interface the Provisioner uses; HttpTransport speaks SoftAP HTTP (docs/protocol.md 1.1) the way
Espressif's client does (docs/protocol.md 1.1); rmkit.provision.ble carries the same requests over BLE GATT
(docs/protocol.md 1.2).
"""

from __future__ import annotations

import http.client
import logging
import socket

from rmkit.provision.errors import DeviceUnreachable, TransportError

log = logging.getLogger(__name__)

# The largest request our node serves: firmware/rmnode/http.py MAX_BODY (docs/protocol.md 1.1; a test holds
# the two equal)
MAX_REQUEST = 2048


class Transport:
    """One protocomm channel to one node."""

    label = ""  # how the node is reached, for pictures and progress lines ("SoftAP", "BLE")

    def send(self, endpoint: str, data: bytes) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_host(host: str, default_port: int = 80) -> tuple[str, int]:
    """'127.0.0.1:8080' -> ('127.0.0.1', 8080); '[::1]:80' and a bare host work too."""
    if host.startswith("["):
        address, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        address, _, port = host.partition(":")
    else:
        address, port = host, ""
    if not address:
        raise ValueError(f"no host name in {host!r}")
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad port in {host!r}")
        return address, int(port)
    return address, default_port


class HttpTransport(Transport):
    """`POST /<endpoint>` on one persistent HTTP/1.1 connection, with the node's session cookie.

    The node names the session in `Set-Cookie: session=<n>` on a session's first response; every later
    request carries it back as `Cookie`, so the session survives a reconnect (docs/protocol.md 1.1). Requests are never
    retried: with Security 1 a request the node has already decrypted moves its keystream (docs/protocol.md 3.3).
    """

    label = "SoftAP"

    def __init__(self, host: str, port: int = 80, timeout: float = 15.0):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.cookie: str | None = None
        self._conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            self._conn.connect()
        except OSError as exc:
            self._conn.close()
            raise DeviceUnreachable("connect", f"cannot reach {host}:{port}: {_describe(exc)}") from exc
        log.debug("connected to %s:%d", host, port)

    def send(self, endpoint: str, data: bytes) -> bytes:
        if not data or len(data) > MAX_REQUEST:
            raise ValueError(f"{endpoint}: request of {len(data)} bytes (node accepts 1..{MAX_REQUEST})")
        # the headers Espressif's client sends (docs/protocol.md 1.1); the form content type is not honoured
        headers = {"Content-type": "application/x-www-form-urlencoded", "Accept": "text/plain"}
        if self.cookie:
            headers["Cookie"] = self.cookie
        try:
            self._conn.request("POST", "/" + endpoint, data, headers)
            response = self._conn.getresponse()
            body = response.read()
        except ConnectionRefusedError as exc:
            self._conn.close()
            raise DeviceUnreachable(endpoint, f"cannot reach {self.host}:{self.port}: {_describe(exc)}") from exc
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise TransportError(endpoint, f"connection lost: {_describe(exc)}") from exc
        if response.status != 200:
            # the node closes the connection after an error (docs/protocol.md 1.1)
            self._conn.close()
            raise TransportError(endpoint, f"node answered HTTP {response.status} {response.reason}",
                                 status=response.status)
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                self.cookie = value.split(";", 1)[0].strip()
                log.debug("session cookie %s", self.cookie)
        log.debug("%s: %d bytes -> %d bytes", endpoint, len(data), len(body))
        return body

    def close(self) -> None:
        self._conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "node closed the connection without answering"
    text = str(exc)
    return text or type(exc).__name__
