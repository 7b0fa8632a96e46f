"""CloudService: the whole local cloud in one object (storage, REST API on waitress, MQTT subscriber)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Optional

from waitress import wasyncore
from waitress.server import create_server

from rmkit.cloud.accounts import Accounts
from rmkit.cloud.api import create_app
from rmkit.cloud.mapping import MappingService
from rmkit.cloud.mqtt import MappingSubscriber, MqttSettings
from rmkit.cloud.storage import Storage, open_storage

log = logging.getLogger("rmkit.cloud")


class CloudService:
    """Start with start(), stop with stop() (or use as a context manager); `base_url` once started.

    `db` is a SQLite file path (or sqlite:///path); `port=0` picks a free port; `mqtt=None` runs the
    REST side only (node publishes can then be fed with `mapping.ingest(node_id, payload)`).
    """

    def __init__(self, db: str | Path, host: str = "127.0.0.1", port: int = 0, mapping_timeout: float = 60.0,
                 token_ttl: int = 3600, mqtt: Optional[MqttSettings] = None, threads: int = 8):
        self.storage: Storage = open_storage(db)
        self.accounts = Accounts(self.storage, token_ttl_s=token_ttl)
        self.mapping = MappingService(self.storage, timeout_s=mapping_timeout)
        self.host = host
        self._port = port
        self._threads = threads
        self._mqtt_settings = mqtt
        self.subscriber: Optional[MappingSubscriber] = None
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
        app = create_app(self.accounts, self.mapping)
        # waitress: a real WSGI server with a thread pool; binds here, so port 0 resolves now
        self._server = create_server(app, host=self.host, port=self._port, threads=self._threads,
                                     ident="rmkit-cloud", clear_untrusted_proxy_headers=True)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, args=(self._server,), name="cloud-http", daemon=True)
        self._thread.start()
        log.info("REST API on %s/v1/ (mapping timeout %.0f s, db %s)", self.base_url,
                 self.mapping.timeout_s, getattr(self.storage, "path", "?"))
        if self._mqtt_settings is not None:
            self.subscriber = MappingSubscriber(self._mqtt_settings, self.mapping)
            try:
                self.subscriber.start()
            except Exception:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        if self.subscriber is not None:
            self.subscriber.stop()
            self.subscriber = None
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
