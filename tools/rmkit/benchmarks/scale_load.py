"""One load process of the scale benchmark (rmkit.benchmarks.scale): simulated nodes and logged-in clients.

Run as `python -m rmkit.benchmarks.scale_load`; the coordinator writes one JSON job line on stdin, then
one command per line (`map`, `raw`, `stop`); this process answers with JSON lines on stdout
(`{"event": "ready"}`, `{"event": "progress", ...}`, `{"event": "map", ...}`, `{"event": "raw", ...}`).
Times are `time.monotonic()` values, one clock for every process on the machine, so the coordinator
can merge the processes' results.

Each node is a paho client with its own certificate (mutual TLS, client id = node id, MQTT 3.1.1 as the
firmware speaks it, docs/protocol.md 5.1); each client is a coroutine speaking the REST API
(docs/protocol.md 6) over a new connection per call, as rmkit.cloud_client and esp-rainmaker-cli do.
Everything runs on one asyncio loop: paho's external-loop hooks put its sockets on the loop, so a
thousand nodes cost no threads.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Optional

import paho.mqtt.client as mqtt

MAPPING_TOPIC = "node/{}/user/mapping"  # docs/protocol.md 5.2
RAW_TOPIC = "node/{}/scale-raw"  # inside the node's ACL (node/<CN>/#); nobody subscribes to it
HTTP_RETRIES = 5  # a refused or reset connection is retried (and counted): the backlog can overflow


@dataclass
class Mapping:
    """One node and the client that maps it."""

    node_id: str
    cert_pem: str
    key_pem: str
    user_id: str
    access_token: str
    secret_key: str

    def payload(self) -> bytes:
        # docs/protocol.md 5.3: compact JSON, keys in this order
        return json.dumps({"node_id": self.node_id, "user_id": self.user_id, "secret_key": self.secret_key},
                          separators=(",", ":")).encode()


class HttpFailed(Exception):
    pass


class RestClient:
    """HTTP/1.1, one connection per call (`Connection: close`), JSON bodies."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.retries = 0

    async def call(self, method: str, path: str, token: str, body: Optional[dict] = None) -> tuple[int, dict]:
        data = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAuthorization: {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
        for attempt in range(HTTP_RETRIES + 1):
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(head.encode() + data)
                    raw = await reader.read()
                finally:
                    writer.close()
                status_line, _, rest = raw.partition(b"\r\n")
                _, _, body_bytes = rest.partition(b"\r\n\r\n")
                return int(status_line.split()[1]), json.loads(body_bytes)
            except (OSError, IndexError, ValueError) as exc:
                if attempt == HTTP_RETRIES:
                    raise HttpFailed(f"{method} {path}: {exc!r}") from None
                self.retries += 1
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")


class Node:
    """A paho client whose socket lives on the asyncio loop; publish() waits for the PUBACK."""

    def __init__(self, mapping: Mapping, ca_pem: str, loop: asyncio.AbstractEventLoop):
        self.mapping, self.loop = mapping, loop
        self.connected: asyncio.Future = loop.create_future()
        self._acks: dict[int, asyncio.Future] = {}
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=mapping.node_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_pem)
        context.load_cert_chain(mapping.cert_pem, mapping.key_pem)
        client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_socket_open = lambda c, u, sock: loop.add_reader(sock, c.loop_read)
        client.on_socket_close = lambda c, u, sock: loop.remove_reader(sock)
        client.on_socket_register_write = lambda c, u, sock: loop.add_writer(sock, c.loop_write)
        client.on_socket_unregister_write = lambda c, u, sock: loop.remove_writer(sock)
        self.client = client

    def connect(self, host: str, port: int) -> None:
        self.client.connect(host, port, keepalive=120)  # TCP + TLS handshake block here; CONNACK comes later

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not self.connected.done():
            if reason_code.is_failure:
                self.connected.set_exception(ConnectionError(f"{self.mapping.node_id}: {reason_code}"))
            else:
                self.connected.set_result(True)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        future = self._acks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(time.monotonic())

    async def publish(self, topic: str, payload: bytes) -> tuple[float, float]:
        """(sent, PUBACK received), monotonic."""
        future = self.loop.create_future()
        sent = time.monotonic()
        info = self.client.publish(topic, payload, qos=1)
        self._acks[info.mid] = future
        if info.is_published():  # the PUBACK came back inside publish()
            self._acks.pop(info.mid, None)
            return sent, time.monotonic()
        return sent, await future


class LoadProcess:
    def __init__(self, job: dict):
        self.job = job
        self.loop = asyncio.get_running_loop()
        self.mappings = [Mapping(**m) for m in job["mappings"]]
        host, port = job["cloud"]
        self.rest = RestClient(host, port)
        self.nodes = [Node(m, job["ca_pem"], self.loop) for m in self.mappings]
        self.confirmed = 0
        self.stopping = False

    async def connect_nodes(self) -> None:
        host, port = self.job["broker"]
        for node in self.nodes:
            node.connect(host, port)
            await asyncio.sleep(0)  # lets earlier nodes' CONNACKs in while later ones handshake
        await asyncio.wait_for(asyncio.gather(*(n.connected for n in self.nodes)), timeout=120)
        self.loop.create_task(self._misc())

    async def _misc(self) -> None:
        """paho's keepalive and retry bookkeeping, which its own loop would run."""
        while not self.stopping:
            for node in self.nodes:
                node.client.loop_misc()
            await asyncio.sleep(1.0)

    async def map_all(self) -> dict:
        started = time.monotonic()
        reporter = self.loop.create_task(self._progress())
        results = await asyncio.gather(*(self._map_one(n) for n in self.nodes))
        reporter.cancel()
        return {"event": "map", "started": started, "results": results, "http_retries": self.rest.retries}

    async def _map_one(self, node: Node) -> dict:
        """The secret-key flow for one node: PUT, the node's QoS 1 publish, polls every poll_s until final."""
        m, poll_s, give_up_s = node.mapping, self.job["poll_s"], self.job["give_up_s"]
        put_at = time.monotonic()
        result = {"node_id": m.node_id, "put": put_at, "status": "error", "polls": 0}
        try:
            status, body = await self.rest.call("PUT", "/v1/user/nodes/mapping", m.access_token,
                                                {"node_id": m.node_id, "user_id": m.user_id,
                                                 "secret_key": m.secret_key, "operation": "add"})
            result["put_answered"] = time.monotonic()
            if status != 200 or "request_id" not in body:
                result["error"] = f"PUT answered {status}: {body.get('description', body)}"
                return result
            result["published"], result["puback"] = await node.publish(MAPPING_TOPIC.format(m.node_id), m.payload())
            path = f"/v1/user/nodes/mapping?request_id={body['request_id']}"
            while True:
                status, answer = await self.rest.call("GET", path, m.access_token)
                result["polls"] += 1
                request_status = answer.get("request_status", f"HTTP {status}")
                if request_status in ("confirmed", "timedout", "discarded") or \
                        time.monotonic() - put_at > give_up_s:
                    result["status"], result["final"] = request_status, time.monotonic()
                    if request_status == "confirmed":
                        self.confirmed += 1
                    return result
                await asyncio.sleep(poll_s)
        except (HttpFailed, asyncio.TimeoutError) as exc:
            result["error"] = str(exc)
            return result

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            emit({"event": "progress", "confirmed": self.confirmed, "of": len(self.nodes)})

    async def raw_all(self) -> dict:
        """The broker alone: every node publishes a payload of its mapping's size, QoS 1, at once."""
        started = time.monotonic()
        pairs = await asyncio.gather(*(n.publish(RAW_TOPIC.format(n.mapping.node_id),
                                                 b"x" * len(n.mapping.payload())) for n in self.nodes))
        return {"event": "raw", "started": started, "acks": [[sent, acked] for sent, acked in pairs]}

    def stop(self) -> None:
        self.stopping = True
        for node in self.nodes:
            node.client.disconnect()


def emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main() -> None:
    loop = asyncio.get_running_loop()
    job = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    load = LoadProcess(job)
    await load.connect_nodes()
    emit({"event": "ready", "nodes": len(load.nodes)})
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if command == "map":
            emit(await load.map_all())
        elif command == "raw":
            emit(await load.raw_all())
        else:  # "stop", or the coordinator went away (EOF)
            load.stop()
            await asyncio.sleep(0.1)  # lets the DISCONNECTs out
            return


if __name__ == "__main__":
    asyncio.run(main())
