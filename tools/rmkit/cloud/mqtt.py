"""The cloud's MQTT side: receive nodes' user-mapping publishes (spec 5.2, 5.3) and hand them to matching.

Connects with the cloud's client certificate over mutual TLS (verification on), subscribes to the
plain form as a *shared* subscription so several cloud processes can consume one broker (each publish
goes to one of them; they share the database, so any of them can decide), and reconnects by itself (paho's loop
with exponential backoff). Both topic forms are consumed: `node/<id>/user/mapping` and the
basic-ingest form `$aws/rules/esp_user_node_mapping/node/<id>/user/mapping`.
"""

from __future__ import annotations

import logging
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import paho.mqtt.client as mqtt

from rmkit.cloud.mapping import MappingService

log = logging.getLogger("rmkit.cloud.mqtt")

MAPPING_SUFFIX = "user/mapping"
BASIC_INGEST_PREFIX = "$aws/rules/esp_user_node_mapping/"  # spec 5.2
TOPIC_FILTERS = ("node/+/" + MAPPING_SUFFIX, BASIC_INGEST_PREFIX + "node/+/" + MAPPING_SUFFIX)
MAX_PAYLOAD = 1024  # the firmware's buffer is 200 bytes (spec 5.3); anything far bigger is not a mapping


@dataclass
class MqttSettings:
    """Where the broker is and who the cloud is; PEM file paths."""

    host: str
    port: int
    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    share_group: Optional[str] = "rmkit-cloud"  # None: plain subscriptions (every instance gets every publish)
    client_id: str = field(default_factory=lambda: "cloud-" + uuid.uuid4().hex[:12])
    keepalive_s: int = 30

    @classmethod
    def from_pki(cls, pki_dir: Path | str, host: str, port: int, **kwargs) -> "MqttSettings":
        from rmkit.pki import Pki  # imported late: only the MQTT side needs the PKI

        pki = Pki(pki_dir)
        identity = pki.client_identity("cloud")
        return cls(host=host, port=port, ca_pem=Path(pki.ca_pem), cert_pem=Path(identity.cert_pem),
                   key_pem=Path(identity.key_pem), **kwargs)

    def filters(self) -> list[str]:
        plain, basic_ingest = TOPIC_FILTERS
        if not self.share_group:
            return [plain, basic_ingest]
        # mosquitto 2.0.11 never delivers `$`-topics through a $share subscription (measured), so the
        # basic-ingest form is subscribed plainly: with several instances each gets a copy, and the
        # duplicate check in MappingService.node_reported makes the second copy a no-op.
        return [f"$share/{self.share_group}/{plain}", basic_ingest]


def node_id_from_topic(topic: str) -> Optional[str]:
    """The node id in a mapping topic (either form), or None for any other topic."""
    if topic.startswith(BASIC_INGEST_PREFIX):
        topic = topic[len(BASIC_INGEST_PREFIX):]
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "node" and parts[1] and "/".join(parts[2:]) == MAPPING_SUFFIX:
        return parts[1]
    return None


class MappingSubscriber:
    """paho client feeding MappingService.ingest; start() returns once subscribed (or raises)."""

    def __init__(self, settings: MqttSettings, mapping: MappingService):
        self.settings = settings
        self.mapping = mapping
        self._subscribed = threading.Event()
        self._connect_error: Optional[str] = None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.ca_pem))
        context.load_cert_chain(str(settings.cert_pem), str(settings.key_pem))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        client.tls_set_context(context)  # CERT_REQUIRED + hostname check (create_default_context)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

    def start(self, timeout: float = 10.0) -> None:
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise ConnectionError(f"cloud could not subscribe at {self.settings.host}:{self.settings.port}"
                                  f" within {timeout:.0f} s ({self._connect_error or 'no answer'})")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    # paho callbacks (run on paho's network thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._connect_error = str(reason_code)
            log.warning("broker refused the cloud's connection: %s", reason_code)
            return
        log.info("connected to broker %s:%d as %s", self.settings.host, self.settings.port,
                 self.settings.client_id)
        # subscribe on every (re)connect: the session is clean
        client.subscribe([(topic, 1) for topic in self.settings.filters()])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        granted = [rc for rc in reason_codes if not rc.is_failure]
        if len(granted) != len(reason_codes):
            log.warning("broker refused some mapping subscriptions: %s", [str(rc) for rc in reason_codes])
        if granted:
            log.info("subscribed to %s", ", ".join(self.settings.filters()))
            self._subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._subscribed.clear()
        if reason_code.is_failure:
            log.warning("disconnected from broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, message):
        node_id = node_id_from_topic(message.topic)
        if node_id is None:
            log.warning("dropped publish on unexpected topic %r", message.topic)
            return
        if len(message.payload) > MAX_PAYLOAD:
            log.warning("dropped mapping publish for node %r: payload of %d bytes", node_id,
                        len(message.payload))
            return
        try:
            self.mapping.ingest(node_id, message.payload)
        except Exception:  # a database hiccup must not kill paho's thread
            log.exception("mapping publish for node %r not applied", node_id)
