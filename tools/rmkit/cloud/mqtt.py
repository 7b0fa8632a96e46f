"""The cloud's MQTT side: receive nodes' user-mapping publishes (docs/protocol.md 5.2, 5.3) and hand them to matching.

Connects with the cloud's client certificate over mutual TLS (verification on), subscribes to both
topic forms, `node/<id>/user/mapping` and the basic-ingest form
`$aws/rules/esp_user_node_mapping/node/<id>/user/mapping`, and reconnects by itself (paho's loop with
exponential backoff).

Nothing is lost while the cloud or the broker is down: a node forgets its pending mapping as soon as
the broker acknowledges its QoS 1 publish, so the cloud keeps a *persistent* MQTT 5 session
(clean_start=False, a session expiry, a stable client id, QoS 1 subscriptions) and the broker queues
the publishes for it until it reconnects; the broker saves sessions to disk, so they outlive its own
restarts. Each publish is acknowledged to the broker only after MappingService has committed it
(manual acks): a crash before the commit leaves it unacknowledged, and the broker delivers it again
(DUP) on the next connect.

paho's network thread only receives: it puts each publish in a bounded inbox, and an ingest thread
applies what has gathered there in one transaction (one commit, one fsync for up to MAX_BATCH
reports), then acknowledges them in the order they came (MQTT 5.0, 4.6: PUBACKs in the order the
PUBLISHes were received). So a slow commit never stops the cloud reading from the broker, and a
burst of reports costs a few commits instead of one each. A full inbox makes paho's thread wait: the
broker keeps whatever has not been acknowledged, as it does for a cloud that is down. An
acknowledgement is only sent on the connection the publish came in on: after a reconnect the packet
id may name another message, and the broker redelivers this one anyway.

Several cloud processes on one database each hold their own plain subscription and get every
publish; MappingService applies a report once (the duplicate check runs inside the write
transaction), so the second copy is a no-op. No `$share` group: mosquitto 2.0.11 did not queue for a
shared group after a broker restart while no member was connected, and the node's mapping, already
acknowledged, never reached any cloud (measured).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rmkit.cloud.mapping import MappingService

log = logging.getLogger("rmkit.cloud.mqtt")

MAPPING_SUFFIX = "user/mapping"
BASIC_INGEST_PREFIX = "$aws/rules/esp_user_node_mapping/"  # docs/protocol.md 5.2
TOPIC_FILTERS = ("node/+/" + MAPPING_SUFFIX, BASIC_INGEST_PREFIX + "node/+/" + MAPPING_SUFFIX)
MAX_PAYLOAD = 1024  # the firmware's buffer is 200 bytes (docs/protocol.md 5.3); anything far bigger is not a mapping
# How long the broker keeps the session (and queues publishes) of a cloud that stays away. Long enough
# for a weekend outage; finite so that the session of an instance that never comes back (scale-down,
# a deleted deployment) does not hold messages forever (spec-free choice, see MqttSettings).
DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600
QUICK_DROP_S = 5.0  # a connection that ends sooner than this after CONNACK counts as a quick drop
QUICK_DROPS_TO_WARN = 3
RETRY_DELAYS_S = (0.5, 1, 2, 5)  # between attempts to apply a publish the storage refused; then every 5 s
INBOX_SIZE = 2000  # received, not yet applied; mosquitto sends at most 20 unacknowledged (max_inflight_messages)
MAX_BATCH = 500  # publishes applied in one transaction


@dataclass
class MqttSettings:
    """Where the broker is and who the cloud is; PEM file paths."""

    host: str
    port: int
    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    # The MQTT client id names the broker-side session. Our broker makes it the certificate's CN
    # whatever the client sends (rmkit.broker), so with a PKI each instance slot uses an identity of
    # its own (for_slot). None without a PKI: CloudService derives one per deployment and slot.
    client_id: Optional[str] = None
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S  # 0: no persistent session (publishes while down are lost)
    keepalive_s: int = 30
    pki_dir: Optional[Path] = None  # where for_slot() gets (or issues) the slot's identity

    @classmethod
    def from_pki(cls, pki_dir: Path | str, host: str, port: int, **kwargs) -> "MqttSettings":
        return cls._with_identity(Path(pki_dir), "cloud", host=host, port=port, **kwargs)

    def for_slot(self, slot: int) -> "MqttSettings":
        """These settings for the cloud instance in `slot`: its own certificate, client id = its CN."""
        if self.pki_dir is None:
            return self
        from rmkit.pki import cloud_identity

        fields = {name: getattr(self, name) for name in self.__dataclass_fields__
                  if name not in ("ca_pem", "cert_pem", "key_pem", "client_id")}
        fields.pop("pki_dir")
        return MqttSettings._with_identity(self.pki_dir, cloud_identity(slot), **fields)

    @classmethod
    def _with_identity(cls, pki_dir: Path, name: str, **kwargs) -> "MqttSettings":
        from rmkit.pki import Pki  # imported late: only the MQTT side needs the PKI

        pki = Pki(pki_dir)
        identity = pki.client_identity(name)
        kwargs.setdefault("client_id", name)
        return cls(ca_pem=Path(pki.ca_pem), cert_pem=Path(identity.cert_pem), key_pem=Path(identity.key_pem),
                   pki_dir=pki_dir, **kwargs)

    def filters(self) -> list[str]:
        return list(TOPIC_FILTERS)


def node_id_from_topic(topic: str) -> Optional[str]:
    """The node id in a mapping topic (either form), or None for any other topic."""
    if topic.startswith(BASIC_INGEST_PREFIX):
        topic = topic[len(BASIC_INGEST_PREFIX):]
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "node" and parts[1] and "/".join(parts[2:]) == MAPPING_SUFFIX:
        return parts[1]
    return None


class MappingSubscriber:
    """paho client feeding MappingService.ingest; start() returns once subscribed (or raises).

    `client_id` overrides settings.client_id (CloudService passes the derived one); one of them is needed.
    """

    def __init__(self, settings: MqttSettings, mapping: MappingService, client_id: Optional[str] = None):
        self.settings = settings
        self.mapping = mapping
        self.client_id = client_id or settings.client_id
        if not self.client_id:
            raise ValueError("MappingSubscriber needs a client id (the name of the broker-side session)")
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self._connect_error: Optional[str] = None
        self.session_present: Optional[bool] = None  # of the latest connect: did the broker keep our session?
        self._connected_at = 0.0
        self._quick_drops = 0
        self._inbox: queue.Queue = queue.Queue(INBOX_SIZE)
        self._ingest_thread: Optional[threading.Thread] = None
        # which connection a publish came in on: its packet id means something on that one only
        self._connection = 0
        self._connection_lock = threading.Lock()
        # MQTT 5 (not 3.1.1) for the session expiry: a 3.1.1 persistent session lives until the broker
        # forgets it. manual_ack: paho would send the PUBACK after on_message even when applying failed.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
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
        self._stopping.clear()
        self._ingest_thread = threading.Thread(target=self._ingest_loop, name="cloud-ingest", daemon=True)
        self._ingest_thread.start()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        # clean_start=False on *every* connect: paho's default (MQTT_CLEAN_START_FIRST_ONLY) would
        # discard on the first connect exactly the session that queued publishes while we were down
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s,
                                   clean_start=self.settings.session_expiry_s == 0, properties=properties)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise ConnectionError(f"cloud could not subscribe at {self.settings.host}:{self.settings.port}"
                                  f" within {timeout:.0f} s ({self._connect_error or 'no answer'})")

    def stop(self) -> None:
        """Disconnect; the broker keeps the session (and queues) for session_expiry_s."""
        self._stopping.set()  # ends the ingest thread's retry loop; what it holds stays unacknowledged
        self._client.disconnect()
        self._client.loop_stop()
        if self._ingest_thread is not None:
            self._ingest_thread.join(timeout=15)
            self._ingest_thread = None

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    # paho callbacks (run on paho's network thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._connect_error = str(reason_code)
            log.warning("broker refused the cloud's connection: %s", reason_code)
            return
        self.session_present = bool(flags.session_present)
        self._connected_at = time.monotonic()
        with self._connection_lock:
            self._connection += 1
        log.info("connected to broker %s:%d as %s (%s)", self.settings.host, self.settings.port, self.client_id,
                 "resumed session" if self.session_present else "new session")
        # Subscribe on every connect: the broker may have lost the session (restart without persistence,
        # expiry). Re-subscribing an existing subscription only replaces it; QoS 1 so that publishes
        # are queued for us and redelivered until acknowledged.
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
        with self._connection_lock:
            self._connection += 1
        if reason_code.is_failure:
            log.warning("disconnected from broker (%s); reconnecting", reason_code)
        # Two connections with one client id (one certificate: the broker makes the CN the client id)
        # kick each other out, each reconnecting a second later. mosquitto 2.0.11 just closes the older
        # socket (measured: no DISCONNECT "Session taken over" reaches paho), so notice the pattern.
        if self._connected_at and time.monotonic() - self._connected_at < QUICK_DROP_S:
            self._quick_drops += 1
        else:
            self._quick_drops = 0
        if reason_code == "Session taken over" or self._quick_drops == QUICK_DROPS_TO_WARN:
            log.error("broker keeps dropping session %s right after connecting: is another process using "
                      "this certificate? give each cloud instance its own (with --pki, each slot gets one)",
                      self.client_id)

    def _on_message(self, client, userdata, message):
        # paho's thread: queue only. Waiting for room is fine (the broker holds the rest); when stopping,
        # the publish is left unacknowledged and comes again on the next connect.
        item = (self._connection, message)
        while not self._stopping.is_set():
            try:
                self._inbox.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # the ingest thread

    def _ingest_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                batch = [self._inbox.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            if self._apply([message for _, message in batch]):
                self._ack(batch)

    def _ack(self, batch: list) -> None:
        """Only now: the reports (and any confirmations) are committed, so the broker may forget them."""
        with self._connection_lock:
            for connection, message in batch:
                if connection == self._connection:
                    self._client.ack(message.mid, message.qos)

    def _apply(self, messages: list) -> bool:
        """True once the publishes are committed or deliberately dropped; False if we are stopping first."""
        publishes = []
        for message in messages:
            node_id = node_id_from_topic(message.topic)
            if node_id is None:
                log.warning("dropped publish on unexpected topic %r", message.topic)
            elif len(message.payload) > MAX_PAYLOAD:
                log.warning("dropped mapping publish for node %r: payload of %d bytes", node_id,
                            len(message.payload))
            else:
                publishes.append((node_id, message.payload))
        if not publishes:
            return True
        nodes = ", ".join(repr(node_id) for node_id, _ in publishes[:3]) + (" ..." if len(publishes) > 3 else "")
        attempt = 0
        while True:
            try:
                self.mapping.ingest_batch(publishes)  # bad payloads are logged and dropped inside
                return True
            except (sqlite3.Error, OSError):  # storage refused (locked, disk full): keep them, never ack unapplied
                delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
                log.exception("mapping publish for node %s not applied yet; retrying in %.1f s", nodes, delay)
                attempt += 1
            except Exception:  # not a storage refusal: retrying cannot help, and other nodes must not wait
                if len(messages) > 1:  # find the one that cannot be processed; apply the others
                    return all([self._apply([message]) for message in messages])
                log.exception("dropped mapping publish for node %s: it could not be processed", nodes)
                return True
            # Waiting here holds the ingest thread: later publishes wait in the inbox and at the broker, in order.
            if self._stopping.wait(delay):
                log.warning("stopping with the mapping publish for node %s unapplied; the broker redelivers "
                            "it on the next connect", nodes)
                return False
