"""CloudService: the whole local cloud in one object (storage, REST API on waitress, MQTT subscriber).

With http_processes=N the REST API is served by this process and N-1 more (rmkit.cloud.http_worker)
on the same listening socket and database: one CPython process runs one thread at a time, and a
thousand clients at once keep one busy. The MQTT side always runs here, once per instance.

The MQTT client id names the cloud's persistent session at the broker (rmkit.cloud.mqtt), so it must
be the same after a restart and differ between instances running together. Each instance holds a
*slot*: the lowest n for which this process holds the lock file `<db>.mqtt-slot-<n>.lock` (flock,
released by the kernel even on SIGKILL). One instance always gets slot 0; two instances sharing one
database (scale-out; SQLite in WAL mode means one host, so a lock file next to it is seen by all of
them) get 0 and 1, and a restarted instance takes the free slot back with its queued publishes.

Our broker binds the client id to the certificate's CN (use_username_as_clientid), so with a PKI the
slot picks the certificate: `cloud`, `cloud-1`, ... (rmkit.pki.cloud_identity), issued on first use;
one deployment per broker and PKI. Without a PKI (certificate files given, a broker that takes client
ids as sent) the client id is `rmkit-cloud-<deployment>-<slot>`, the deployment part a random id stored
once in the database (meta `mqtt_deployment_id`).

Challenge-response mapping (rmkit.cloud.challenge_mapping) needs the nodes' certificates: they come
from `pki_dir`, the PKI that issued them (rmkit.cloud.node_registry), by default the MQTT side's. A
cloud without a PKI answers every verify with "node unknown".

Several instances each get every publish (plain subscriptions, rmkit.cloud.mqtt), so one that is
down misses nothing: its session queues what arrives meanwhile, and the copies it then applies are
no-ops. A slot that never comes back holds its queue until the session expires
(MqttSettings.session_expiry_s).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from waitress import wasyncore
from waitress.server import create_server

from rmkit.cloud.accounts import Accounts, LoginLimits
from rmkit.cloud.api import create_app
from rmkit.cloud.challenge_mapping import ChallengeService
from rmkit.cloud.http_worker import relay_log_line
from rmkit.cloud.mapping import MappingService
from rmkit.cloud.node_registry import node_registry
from rmkit.cloud.mqtt import MappingSubscriber, MqttSettings
from rmkit.cloud.storage import Storage, open_storage
from rmkit.pki import CLOUD_SLOTS

log = logging.getLogger("rmkit.cloud")

DEPLOYMENT_ID_KEY = "mqtt_deployment_id"
CLIENT_ID_PREFIX = "rmkit-cloud-"
MAX_SLOTS = CLOUD_SLOTS  # more instances than this on one database is surely a leak of lock files or processes


def deployment_id(storage: Storage) -> str:
    """This database's deployment id, created on first use (also by two instances starting together)."""
    with storage.transaction() as tx:  # BEGIN IMMEDIATE: the second starter reads the first one's value
        value = tx.get_meta(DEPLOYMENT_ID_KEY)
        if value is None:
            value = secrets.token_hex(6)
            tx.set_meta(DEPLOYMENT_ID_KEY, value)
    return value


class SessionSlot:
    """An exclusive flock on `<db>.mqtt-slot-<n>.lock`, held while the instance runs; release() frees it."""

    def __init__(self, db_path: Path, max_slots: int = MAX_SLOTS):
        self.number: Optional[int] = None
        self._fd: Optional[int] = None
        for n in range(max_slots):
            path = db_path.with_name(f"{db_path.name}.mqtt-slot-{n}.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                # flock, not lockf: POSIX locks belong to the process, so two services in one process
                # (tests) would both "get" slot 0, and closing any descriptor would drop them
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.number, self._fd = n, fd
            return
        raise RuntimeError(f"all {max_slots} MQTT session slots of {db_path} are taken by running instances")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock; the file stays so the slot keeps its number
            self._fd = None


def session_client_id(storage: Storage, slot: int) -> str:
    return f"{CLIENT_ID_PREFIX}{deployment_id(storage)}-{slot}"


class CloudService:
    """Start with start(), stop with stop() (or use as a context manager); `base_url` once started.

    `db` is a SQLite file path (or sqlite:///path); `port=0` picks a free port; `mqtt=None` runs the
    REST side only (node publishes can then be fed with `mapping.ingest(node_id, payload)`);
    `http_processes` counts the processes serving REST, this one included (see the module's doc);
    `pki_dir` is where the nodes' certificates are, for challenge-response mapping (default: the MQTT
    settings' PKI, else none).
    """

    def __init__(self, db: str | Path, host: str = "127.0.0.1", port: int = 0, mapping_timeout: float = 60.0,
                 token_ttl: int = 3600, mqtt: Optional[MqttSettings] = None, threads: int = 8,
                 login_limits: LoginLimits = LoginLimits(), http_processes: int = 1,
                 pki_dir: Optional[Path | str] = None, clock: Optional[Callable[[], float]] = None):
        if http_processes < 1:
            raise ValueError(f"http_processes must be 1 or more, not {http_processes}")
        self.storage: Storage = open_storage(db)
        self._db = db
        self._login_limits = login_limits
        self._token_ttl = token_ttl
        self._http_processes = http_processes
        self._workers: list[subprocess.Popen] = []
        self.accounts = Accounts(self.storage, token_ttl_s=token_ttl, login_limits=login_limits)
        # clock: the wall clock unless a test moves time itself (mapping timeouts without sleeping; in-process
        # HTTP only: worker processes keep their own)
        self.mapping = MappingService(self.storage, timeout_s=mapping_timeout, **({"clock": clock} if clock else {}))
        if pki_dir is None and mqtt is not None:
            pki_dir = mqtt.pki_dir
        self.pki_dir = Path(pki_dir) if pki_dir is not None else None
        self.challenges = ChallengeService(self.storage, node_registry(self.pki_dir), **({"clock": clock} if clock else {}))
        self.host = host
        self._port = port
        self._threads = threads
        self._mqtt_settings = mqtt
        self.subscriber: Optional[MappingSubscriber] = None
        self._slot: Optional[SessionSlot] = None
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("cloud service not started")
        return self._server.effective_port

    @property
    def base_url(self) -> str:
        """What `esp-rainmaker-cli profile add --base-url` takes (the CLI appends /v1/ itself)."""
        return f"http://{self.host}:{self.port}"

    def add_user(self, email: str, password: str) -> str:
        return self.accounts.add_user(email, password)

    def start(self) -> "CloudService":
        app = create_app(self.accounts, self.mapping, self.challenges)
        # waitress: a real WSGI server with a thread pool; binds here, so port 0 resolves now
        self._server = create_server(app, host=self.host, port=self._port, threads=self._threads,
                                     ident="rmkit-cloud", clear_untrusted_proxy_headers=True)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, args=(self._server,), name="cloud-http", daemon=True)
        self._thread.start()
        try:
            for _ in range(self._http_processes - 1):  # all started first: each takes a while to import
                self._start_worker()
            for worker in self._workers:
                if worker.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"HTTP process {worker.pid} did not start (exit code {worker.wait()}); "
                                       "see the log")
        except Exception:
            self.stop()
            raise
        log.info("REST API on %s/v1/ (%d process%s, mapping timeout %.0f s, db %s; challenge-response: %s)",
                 self.base_url, self._http_processes, "es" if self._http_processes > 1 else "",
                 self.mapping.timeout_s, getattr(self.storage, "path", "?"), self.challenges.registry)
        if self._mqtt_settings is not None:
            try:
                settings = self._instance_settings()
                self.subscriber = MappingSubscriber(settings, self.mapping, settings.client_id)
                self.subscriber.start()
            except Exception:
                self.stop()
                raise
        return self

    def _instance_settings(self) -> MqttSettings:
        """This instance's MQTT settings: with a PKI, the identity of the slot it holds (cloud,
        cloud-1, ...; the broker makes the client id the certificate's CN); without one, the given
        client id, else the deployment's id plus the slot."""
        settings = self._mqtt_settings
        if settings.pki_dir is None and settings.client_id:
            return settings
        db_path = getattr(self.storage, "path", None)
        if db_path is None:
            raise ValueError("this storage has no local file to hold an MQTT session slot: give each "
                             "instance its own certificate and client id")
        self._slot = SessionSlot(Path(db_path))
        if settings.pki_dir is not None:
            return settings.for_slot(self._slot.number)
        return replace(settings, client_id=session_client_id(self.storage, self._slot.number))

    def _start_worker(self) -> None:
        listener = self._server.socket.fileno()
        settings = {"fd": listener, "db": str(self._db), "mapping_timeout": self.mapping.timeout_s,
                    "token_ttl": self._token_ttl, "login_limits": dataclasses.asdict(self._login_limits),
                    "threads": self._threads, "log_level": logging.getLogger("rmkit.cloud").getEffectiveLevel(),
                    "pki_dir": str(self.pki_dir) if self.pki_dir is not None else None}
        worker = subprocess.Popen([sys.executable, "-m", "rmkit.cloud.http_worker"], pass_fds=(listener,),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._workers.append(worker)
        worker.stdin.write(json.dumps(settings) + "\n")
        worker.stdin.flush()
        threading.Thread(target=self._relay_log, args=(worker,), name=f"cloud-http-{worker.pid}-log",
                         daemon=True).start()

    def _relay_log(self, worker: subprocess.Popen) -> None:
        for line in worker.stderr:
            relay_log_line(line, worker.pid)
        if not self._stopping.is_set():  # the others and this process go on serving
            log.error("HTTP process %d ended (exit code %s)", worker.pid, worker.wait())

    def worker_pids(self) -> list[int]:
        """The extra HTTP processes (not this one)."""
        return [worker.pid for worker in self._workers]

    @property
    def client_id(self) -> Optional[str]:
        """The MQTT client id (the broker-side session's name) while subscribed, else None."""
        return self.subscriber.client_id if self.subscriber is not None else None

    def stop(self) -> None:
        if self.subscriber is not None:
            self.subscriber.stop()
            self.subscriber = None
        if self._slot is not None:  # only after the subscriber is gone: the next holder resumes its session
            self._slot.release()
            self._slot = None
        self._stopping.set()
        for worker in self._workers:
            try:
                worker.stdin.close()  # its signal to end
            except OSError:
                pass
        for worker in self._workers:
            try:
                worker.wait(timeout=5)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        self._workers = []
        if self._server is not None:
            self._stopping.set()
            try:
                self._server.pull_trigger()  # wakes the poll loop at once
            except OSError:  # the loop has already ended (and closed the trigger)
                pass
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._server = None
        self.storage.close()

    def _serve(self, server) -> None:
        # waitress's own run() has no stop; closing its sockets from another thread races its
        # select() (EBADF). So the loop runs here, one poll at a time, and closes from this thread.
        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=1.0, map=server._map, use_poll=True, count=1)
        except Exception:
            log.exception("HTTP server loop failed")
            raise
        finally:
            server.task_dispatcher.shutdown()
            wasyncore.close_all(server._map)

    def __enter__(self) -> "CloudService":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
