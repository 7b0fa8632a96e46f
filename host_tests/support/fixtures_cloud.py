"""Fixtures for the local cloud: in-process service, subprocess service (restartable), broker + PKI, REST client.

- `cloud_service`      CloudService in this process, REST only (fast; feed node publishes with
                       `cloud_service.mapping.ingest(node_id, payload)`).
- `node_pki`           a PKI (rmkit.pki.Pki) in a temp dir: the stand-in for claiming that issues node certificates.
- `pki_cloud_service`  CloudService like cloud_service whose node registry is `node_pki` (challenge-response
                       mapping verifies against the node certificates it issues).
- `cloud_process_factory(**opts)` -> CloudProcess: `rmkit cloud serve` as a subprocess, restartable
                       (also after kill(), a SIGKILL crash), stopped at teardown; its log (`.log_text()`) is copied to the test's artifacts
                       dir (cloud.log) whenever it stops.
- `cloud_process`     the same with defaults, REST only.
- `cloud_broker`       mosquitto with mutual TLS from rmkit.broker, PKI in a temp dir (CloudBroker:
                       .broker, .pki, .pki_dir, .publish_mapping(node_id, payload, topic=None),
                       .sent_to(client_id) = the PUBLISH packets mosquitto logged sending to a client).
- `ApiClient(base_url)` small JSON client for the REST API (status + parsed body).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from rmkit.cloud import CloudService
from rmkit.cloud.accounts import Accounts
from rmkit.cloud.mapping import MappingService
from rmkit.cloud.storage import Storage
from rmkit.net import free_port, wait_for_port
from support.paths import REPO_ROOT
from support.wait import wait_until

PASSWORD = "correct horse 42"


# ----------------------------------------------------------------------------------------- REST

@dataclass
class ApiResponse:
    status: int
    body: Any
    text: str
    headers: dict = field(default_factory=dict)


class ApiClient:
    """JSON over urllib against http://127.0.0.1:PORT (the same paths esp-rainmaker-cli uses)."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")

    def request(self, method: str, path: str, body: Any = None, token: Optional[str] = None,
                raw: Optional[bytes] = None) -> ApiResponse:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", token)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, text, headers = resp.status, resp.read().decode(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            status, text, headers = err.code, err.read().decode(), dict(err.headers)
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        return ApiResponse(status, parsed, text, headers)

    def login(self, email: str, password: str = PASSWORD) -> dict:
        resp = self.request("POST", "/v1/login2", {"user_name": email, "password": password})
        assert resp.status == 200 and resp.body["status"] == "success", resp.text
        return resp.body

    def put_mapping(self, token: str, node_id: str, secret_key: str, operation: str = "add",
                    user_id: Optional[str] = None) -> ApiResponse:
        body = {"node_id": node_id, "secret_key": secret_key, "operation": operation}
        if user_id is not None:
            body["user_id"] = user_id
        return self.request("PUT", "/v1/user/nodes/mapping", body, token=token)

    def initiate_mapping(self, token: str, body: Any = None) -> ApiResponse:
        """POST user/nodes/mapping/initiate, with the body esp-rainmaker-cli sends unless given."""
        return self.request("POST", "/v1/user/nodes/mapping/initiate", {"timeout": 360} if body is None else body,
                            token=token)

    def verify_mapping(self, token: str, request_id: str, node_id: str, challenge_response: str) -> ApiResponse:
        body = {"request_id": request_id, "node_id": node_id, "challenge_response": challenge_response}
        return self.request("POST", "/v1/user/nodes/mapping/verify", body, token=token)

    def mapping_status(self, token: str, request_id: str) -> ApiResponse:
        # the CLI's own form, stray `&` included (docs/protocol.md 6)
        return self.request("GET", f"/v1/user/nodes/mapping?&request_id={request_id}", token=token)

    def nodes(self, token: str) -> list:
        """All of the user's node ids, following next_id like the CLI does."""
        found, query = [], ""
        while True:
            resp = self.request("GET", "/v1/user/nodes" + query, token=token)
            assert resp.status == 200, resp.text
            found += resp.body["nodes"]
            if not resp.body.get("next_id"):
                return found
            query = "?start_id=" + resp.body["next_id"]


def db_snapshot(db_path: Path) -> dict:
    """Every row of every table, to show that a rejected input changed nothing."""
    conn = sqlite3.connect(db_path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                             "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        conn.close()


def add_user(db_path: Path, email: str, password: str = PASSWORD) -> str:
    storage = Storage(db_path)
    try:
        return Accounts(storage).add_user(email, password)
    finally:
        storage.close()


# ------------------------------------------------------------------------------ in-process cloud

@pytest.fixture
def cloud_service(tmp_path):
    """A started CloudService (REST only, 60 s mapping timeout) on a fresh database."""
    service = CloudService(tmp_path / "cloud.db", port=0, mapping_timeout=60).start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def node_pki(tmp_path):
    from rmkit.pki import Pki

    return Pki(tmp_path / "pki")


@pytest.fixture
def pki_cloud_service(tmp_path, node_pki):
    """A started CloudService (REST only) that checks challenge responses with `node_pki`'s node certificates."""
    service = CloudService(tmp_path / "cloud.db", port=0, mapping_timeout=60, pki_dir=node_pki.directory).start()
    try:
        yield service
    finally:
        service.stop()


def sign_challenge(identity, challenge: str) -> str:
    """What a node answers on ch_resp, as the client relays it: the hex of its ECDSA P-256 SHA-256 DER
    signature of the challenge's UTF-8 bytes, made with the private key of `identity` (rmkit.pki.Identity)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(identity.key_pem.read_bytes(), password=None)
    return key.sign(challenge.encode("utf-8"), ec.ECDSA(hashes.SHA256())).hex()


# ------------------------------------------------------------------------------- subprocess cloud

class CloudProcess:
    """`rmkit cloud serve` in a child process; the same port and database across restart()."""

    def __init__(self, db_path: Path, log_path: Path, mapping_timeout: float = 60.0, token_ttl: int = 3600,
                 broker_port: Optional[int] = None, pki_dir: Optional[Path] = None,
                 artifact_path: Optional[Path] = None, extra_args: tuple = ()):
        self.db_path = Path(db_path)
        self.log_path = Path(log_path)  # live log, private to this test run
        self.artifact_path = artifact_path  # where stop() copies it for the humans
        self.mapping_timeout = mapping_timeout
        self.token_ttl = token_ttl
        self.broker_port = broker_port
        self.pki_dir = pki_dir
        self.extra_args = tuple(extra_args)  # more `cloud serve` options, e.g. ("--client-id", "x")
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list:
        cmd = [sys.executable, "-m", "rmkit", "cloud", "serve", "--port", str(self.port), "--db", str(self.db_path),
               "--mapping-timeout", str(self.mapping_timeout), "--token-ttl", str(self.token_ttl)]
        if self.broker_port is None:
            cmd.append("--no-mqtt")
        else:
            cmd += ["--broker-port", str(self.broker_port), "--pki", str(self.pki_dir)]
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 15.0) -> "CloudProcess":
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log_file:
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log_file,
                                         stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env, start_new_session=True)
        wait_for_port(self.port, timeout=timeout, alive=lambda: self.proc.poll() is None)
        # with MQTT the port opens before the subscription; "listening on" is printed after both
        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cloud exited at start; log {self.log_path}:\n{self.log_text()[offset:]}")
            return "cloud: listening on" in self.log_text()[offset:]

        wait_until(listening, timeout, what="the cloud's 'listening on' line",
                   detail=lambda: f"log {self.log_path}:\n{self.log_text()[offset:]}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        finally:
            if self.artifact_path is not None and self.log_path.exists():
                shutil.copy(self.log_path, self.artifact_path)

    def kill(self) -> None:
        """SIGKILL: a crash, no clean MQTT DISCONNECT, nothing flushed or acknowledged on the way out."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        if self.artifact_path is not None and self.log_path.exists():
            shutil.copy(self.log_path, self.artifact_path)

    @property
    def client_id(self) -> Optional[str]:
        """The MQTT client id the latest start printed (`... as <id>`), None without MQTT."""
        found = re.findall(r"cloud: listening on .* as (\S+)", self.log_text())
        return found[-1] if found else None

    def restart(self) -> "CloudProcess":
        self.stop()
        return self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def add_user(self, email: str, password: str = PASSWORD) -> str:
        """Adds the user straight into the shared database (what `rmkit cloud add-user` does)."""
        return add_user(self.db_path, email, password)

    def ingest(self, node_id: str, payload: Any) -> Any:
        """Apply a node publish as a second cloud instance on the same database would."""
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        storage = Storage(self.db_path)
        try:
            return MappingService(storage, timeout_s=self.mapping_timeout).ingest(node_id, raw)
        finally:
            storage.close()


@pytest.fixture
def cloud_process_factory(tmp_path, artifacts_dir):
    """make(**CloudProcess options) -> started CloudProcess; its log is copied to <artifacts>/<log name> at stop.

    Give `log_name` to tell several processes of one test apart (default cloud.log).
    """
    started = []

    def make(log_name: str = "cloud.log", **options) -> CloudProcess:
        options.setdefault("db_path", tmp_path / "cloud.db")
        options.setdefault("log_path", tmp_path / log_name)
        options.setdefault("artifact_path", artifacts_dir / log_name)
        cloud = CloudProcess(**options)
        started.append(cloud)
        return cloud.start()

    try:
        yield make
    finally:
        for cloud in started:
            cloud.stop()


# ------------------------------------------------------------------------------ broker + PKI

class CloudBroker:
    """mosquitto (mutual TLS) plus the PKI that issued its certificates; publishes as a node."""

    def __init__(self, pki_dir: Path, workdir: Path):
        from rmkit.broker import Broker
        from rmkit.pki import Pki

        self.pki_dir = pki_dir
        self.pki = Pki(pki_dir)
        self.pki.client_identity("cloud")
        self.broker = Broker(self.pki, workdir, port=0).start()

    @property
    def port(self) -> int:
        return self.broker.port

    def mqtt_settings(self, **kwargs):
        from rmkit.cloud import MqttSettings

        return MqttSettings.from_pki(self.pki_dir, self.broker.host, self.broker.port, **kwargs)

    def publish_mapping(self, node_id: str, payload: Any, topic: Optional[str] = None) -> None:
        """Publish (QoS 1, waits for PUBACK) as the node itself, with its own certificate."""
        self.publish_mappings(node_id, [payload], topic)

    def publish_mappings(self, node_id: str, payloads: list, topic: Optional[str] = None,
                         timeout: float = 60.0) -> None:
        """Publish each payload (QoS 1) as the node, over one connection; returns once every PUBACK is in."""
        import paho.mqtt.client as mqtt

        identity = self.pki.node_identity(node_id)
        context = ssl.create_default_context(cafile=str(self.pki.ca_pem))
        context.load_cert_chain(str(identity.cert_pem), str(identity.key_pem))
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=node_id)
        client.tls_set_context(context)
        client.max_queued_messages_set(0)
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        try:
            infos = [client.publish(topic or f"node/{node_id}/user/mapping",
                                    payload if isinstance(payload, bytes) else json.dumps(payload).encode(), qos=1)
                     for payload in payloads]
            deadline = time.monotonic() + timeout
            for info in infos:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                assert info.is_published(), "broker did not acknowledge every publish of the node"
        finally:
            client.disconnect()
            client.loop_stop()

    def sent_to(self, client_id: str) -> list:
        """mosquitto's log lines for PUBLISH packets it sent to `client_id` (log_type all), oldest first."""
        return [line for line in self.broker.log_text().splitlines() if f"Sending PUBLISH to {client_id} (" in line]

    def stop(self) -> None:
        self.broker.stop()


@pytest.fixture
def cloud_broker(tmp_path, artifacts_dir):
    broker = CloudBroker(tmp_path / "pki", tmp_path / "broker")
    try:
        yield broker
    finally:
        broker.stop()
        log = tmp_path / "broker" / "mosquitto.log"
        if log.exists():
            shutil.copy(log, artifacts_dir / "mosquitto.log")


@pytest.fixture
def cloud_process(cloud_process_factory):
    """`rmkit cloud serve --no-mqtt` in a subprocess (60 s mapping timeout); see cloud_process_factory."""
    return cloud_process_factory()


@contextlib.contextmanager
def database_write_locked(db_path):
    """Hold SQLite's write lock (BEGIN IMMEDIATE) from another connection, as a long writer or another busy
    instance would: the cloud's commits wait meanwhile."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()
