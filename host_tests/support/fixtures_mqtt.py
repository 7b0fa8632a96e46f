"""Fixtures for the broker side: a local PKI, a real mosquitto with mutual TLS, and a paho subscriber.

- `pki`: one CA per test session (creating identities is idempotent and takes milliseconds).
- `broker`: a started `rmkit.broker.Broker` whose config and log live in the test's artifacts dir;
  stopped at teardown even when the test fails.
- `subscriber`: factory for `Subscriber`, a paho-mqtt client with a reader identity that records
  every message on node topics and re-subscribes after a broker restart.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Callable, Optional

import paho.mqtt.client as paho
import pytest

from rmkit.broker import Broker
from rmkit.benchmarks import MQTT_NODE_LAUNCHER, make_flash  # noqa: F401 - make_flash: the tests' flash dirs
from rmkit.pki import Pki
from support.node_process import NodeProcess
from support.paths import FIRMWARE, MICROPYTHON

NODE_TOPICS = ("node/#", "$aws/rules/+/node/#")


class Subscriber:
    """A paho client (cert CN = `identity`) subscribed to every node topic; messages land in `.messages`."""

    def __init__(self, pki: Pki, broker: Broker, identity: str = "harness", topics=NODE_TOPICS,
                 host: str = "localhost") -> None:
        ident = pki.client_identity(identity)
        self.topics = list(topics)
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.subacks = 0  # SUBACKs so far: one per (re)connect
        # the broker makes the client id the certificate's CN anyway: one subscriber per identity at a time
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=identity)
        self.client.tls_set(ca_certs=str(pki.ca_pem), certfile=str(ident.cert_pem), keyfile=str(ident.key_pem))
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(host, broker.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError(f"subscriber {identity} did not get its SUBACK (broker log: {broker.log_path})")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            self._subscribed.clear()
            client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, *args):
        with self._cond:
            self.subacks += 1
            self._cond.notify_all()
        self._subscribed.set()

    def _on_message(self, client, userdata, message):
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload)))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list], bool], timeout: float = 15.0, what: str = "messages") -> list:
        """Block until predicate(messages) holds; AssertionError listing what arrived otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.messages), timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; got {self.messages!r}")
            return list(self.messages)

    def wait_for_topic(self, topic: str, count: int = 1, timeout: float = 15.0) -> list[bytes]:
        self.wait_for(lambda msgs: sum(1 for t, _ in msgs if t == topic) >= count, timeout, f"{count} on {topic}")
        return self.payloads(topic)

    def payloads(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p in self.messages if t == topic]

    def wait_resubscribed(self, subacks_before: int, timeout: float = 15.0) -> None:
        """After a broker restart: block until a SUBACK newer than `subacks_before` arrived."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.subacks > subacks_before, timeout):
                raise TimeoutError("subscriber did not re-subscribe")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """A local CA with the broker, cloud and harness identities (node identities on demand)."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    pki.broker_identity()
    for name in ("cloud", "harness"):
        pki.client_identity(name)
    return pki


@pytest.fixture
def broker_factory(pki, artifacts_dir):
    """Make brokers (not started) whose workdirs live in the test's artifacts; all stopped at teardown."""
    made: list[Broker] = []

    def make(name: str = "broker", pki_: Optional[Pki] = None, **kwargs) -> Broker:
        broker = Broker(pki_ or pki, Path(artifacts_dir) / name, **kwargs)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A running mosquitto (mutual TLS, node ACLs) on a free port."""
    return broker_factory().start()


@pytest.fixture
def subscriber(pki):
    """Factory: subscriber(broker, identity="harness") -> Subscriber; closed at teardown."""
    made: list[Subscriber] = []

    def make(broker: Broker, identity: str = "harness", **kwargs) -> Subscriber:
        sub = Subscriber(pki, broker, identity, **kwargs)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


# -- a node running the firmware's online sequence under the MicroPython unix port ----------------

def read_state(flash: Path) -> dict:
    return json.loads((flash / "state.json").read_text())


def start_mqtt_node(flash: Path, log_path: Path, mode: str = "online", env=None, firmware: Path = FIRMWARE,
                    heap: Optional[str] = None) -> NodeProcess:
    """`micropython launch_mqtt_node.py` (tools/rmkit/benchmarks/, shared with `rmkit bench`) on a flash dir
    made by make_flash: the node's online sequence."""
    command = [MICROPYTHON] + (["-X", f"heapsize={heap}"] if heap else []) + [MQTT_NODE_LAUNCHER, firmware, flash, mode]
    return NodeProcess(command, log_path, env=env or {}, interpreter="micropython")


@pytest.fixture
def node_runner(artifacts_dir):
    """Factory: node_runner(flash, mode="online", env=None) -> NodeProcess; all stopped at teardown."""
    made: list[NodeProcess] = []

    def start(flash: Path, mode: str = "online", env=None, **kwargs) -> NodeProcess:
        node = start_mqtt_node(flash, Path(artifacts_dir) / f"node{len(made)}.log", mode, env, **kwargs)
        made.append(node)
        return node

    yield start
    for node in made:
        node.stop()
