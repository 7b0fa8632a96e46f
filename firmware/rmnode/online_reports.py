"""The online reports: what the node tells the cloud once its station is up (its config, the pending mapping,
a factory reset), over MQTT.

Sequence on every MQTT connect (docs/protocol.md 5.3, 5.4): the node config on `node/<id>/config` (QoS 1),
then, once that is acknowledged, the pending mapping on `node/<id>/user/mapping` (QoS 1). The
pending mapping is cleared, and its user id stored, only when its PUBACK arrives; until then it
is retransmitted across reconnects and, being persisted, across reboots.

Factory reset (docs/protocol.md 5.3, factory-reset reporting): when online, publish the dummy mapping
{"user_id":"esp-rmaker","secret_key":"failed","reset":true} and wait (bounded) for its PUBACK;
then the caller erases its state and reboots into provisioning. `report_factory_reset()` is that
step for the REPL's reset (rmnode.reset); the reset button sets `reset_requested` instead, and the
running sequence reports, then calls `on_factory_reset`.
"""

import sys
import time

import asyncio

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

import rmnode
from rmnode import BUILD_DATE, VERSION, log
from rmnode import mqtt
from rmnode.mapping import MappingState, json_string, reset_payload

_TAG = const("online")

# docs/protocol.md 5.3: how long a factory reset waits for the cloud, to get online (REPL) and for the
# report's PUBACK. The one definition (public: rmnode.reset uses it too).
RESET_TIMEOUT_MS = const(5000)

_BASIC_INGEST = const("$aws/rules/")


class OnlineConfigError(ValueError):
    """Factory data that cannot make an MQTT connection (missing certificate, bad port)."""


def topic(prefix, node_id, suffix):
    """The publish topic of `suffix`, "config" or "user/mapping" (docs/protocol.md 5.2).

    prefix "" gives `node/<id>/<suffix>`; any prefix starting with "$aws/rules/" (for example
    "$aws/rules/esp_user_node_mapping/") selects RainMaker's basic-ingest form, where each message
    kind has its own rule: `$aws/rules/<rule>/node/<id>/<suffix>`. Other prefixes are prepended as is.
    """
    path = "node/%s/%s" % (node_id, suffix)
    if prefix.startswith(_BASIC_INGEST):
        # docs/protocol.md 5.2: the basic-ingest rule of each topic suffix the node publishes on
        rule = {"config": "esp_node_config", "user/mapping": "esp_user_node_mapping"}[suffix]
        return "%s%s/%s" % (_BASIC_INGEST, rule, path)
    return prefix + path


def node_config(node_id, name="rmnode", node_type="Other", fw_version=VERSION, platform=None):
    """Minimal RainMaker node config (docs/protocol.md 5.4, config_version 2020-03-20), compact, keys in Espressif's order."""
    return ('{"node_id":%s,"config_version":"2020-03-20","info":{"name":%s,"fw_version":%s,"type":%s,'
            '"platform":%s},"devices":[]}' % (json_string(node_id), json_string(name), json_string(fw_version),
                                              json_string(node_type), json_string(platform or sys.platform)))


class Online:
    """Runs the online sequence over an MQTTClient; `run()` is a task for the node's whole online life.

    node_info (optional keys name, type, fw_version, platform) goes into the node config.
    """

    def __init__(self, client, mapping_state, node_id, topic_prefix="", node_info=None, on_factory_reset=None):
        self.client = client
        self.mapping = mapping_state
        self.node_id = node_id
        self.node_info = node_info or {}
        self.on_factory_reset = on_factory_reset  # callable(reported: bool): erase state, reboot
        self.config_topic = topic(topic_prefix or "", node_id, "config")
        self.mapping_topic = topic(topic_prefix or "", node_id, "user/mapping")
        self._wake = asyncio.Event()
        # Set by the reset button (rmnode.node.Node.reset_button_pressed), which may run outside the event
        # loop (a scheduled IRQ on the board): run() then reports the reset and calls on_factory_reset.
        self.reset_requested = asyncio.ThreadSafeFlag() if hasattr(asyncio, "ThreadSafeFlag") else asyncio.Event()
        client.on_connect = self._wake.set

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self):
        """Start the MQTT client and report on every connect; runs until cancelled."""
        tasks = (asyncio.create_task(self.client.run()), asyncio.create_task(self._reset_watcher()))
        try:
            await self._report_loop()
        finally:
            for task in tasks:
                task.cancel()

    async def report_once(self):
        """Wait for a connection, publish config then the pending mapping; True if a mapping was acked."""
        client = self.client
        await client.wait_connected()
        info = self.node_info
        await client.publish(self.config_topic, node_config(
            self.node_id, info.get("name", "rmnode"), info.get("type", "Other"), info.get("fw_version", VERSION),
            info.get("platform")))
        log.info(_TAG, "config reported")
        entry = self.mapping.pending()
        if entry is None:
            log.info(_TAG, "no mapping pending")
            return False
        await client.publish(self.mapping_topic, self.mapping.payload(self.node_id, entry))
        self.mapping.acknowledged(entry)
        return True

    # -- factory reset --------------------------------------------------------------------------

    async def report_factory_reset(self, timeout_ms=RESET_TIMEOUT_MS):
        """Publish the reset mapping when online and wait for its PUBACK (bounded); forget the mapping.

        Returns True if the cloud acknowledged the report. Never raises on network errors.
        """
        reported = False
        if self.client.connected:
            log.info(_TAG, "factory reset: reporting to the cloud")
            try:
                await self.client.publish(self.mapping_topic, reset_payload(self.node_id), timeout_ms=timeout_ms)
                reported = True
                log.info(_TAG, "factory reset reported")
            except Exception as exc:
                log.warning(_TAG, "factory reset not reported: " + mqtt.describe(exc))
        else:
            log.warning(_TAG, "factory reset while offline: the cloud is not told")
        self.mapping.erase()
        return reported

    async def _reset_watcher(self):
        await self.reset_requested.wait()
        reported = await self.report_factory_reset()
        if self.on_factory_reset is not None:
            self.on_factory_reset(reported)

    # -- internals ------------------------------------------------------------------------------

    async def _report_loop(self):
        client = self.client
        seen_connects = 0
        while True:
            self._wake.clear()
            try:
                if client.connected and (client.connects != seen_connects or self.mapping.pending() is not None):
                    seen_connects = client.connects
                    await self.report_once()  # config on every connect (docs/protocol.md 5.4), then the mapping
                elif not self._wake.is_set():
                    await self._wake.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the node never crashes on a failed report; the next connect retries
                log.error(_TAG, "report failed: " + mqtt.describe(exc))
                await mqtt.sleep_ms(1000)


def build(node_config, store, is_network_up=None, on_factory_reset=None):
    """An Online with its MQTTClient from a rmnode.config.NodeConfig (factory data + settings).

    The MQTT settings (mqtt_keepalive_s, mqtt_backoff_ms, mqtt_connect_timeout_ms, node_name,
    node_type) are read and checked by NodeConfig.
    """
    cfg = node_config
    cert, key, ca = cfg.cert_path, cfg.key_path, cfg.ca_path
    if not cert or not key or not ca:
        raise OnlineConfigError("factory data has no client certificate, key and CA (cert/key/ca)")
    host = cfg.mqtt_host or "localhost"
    try:
        ssl_context = mqtt.make_ssl_context(cert, key, ca)
    except (OSError, ValueError) as exc:  # missing file, or PEM/garbage where DER is expected
        raise OnlineConfigError("cannot load the TLS files %s, %s, %s: %s" % (cert, key, ca, mqtt.describe(exc)))

    async def set_clock():  # certificate dates need a clock; a board's starts at 2000-01-01
        if tuple(time.gmtime()[:3]) >= BUILD_DATE:  # set already (a soft reset keeps the RTC)
            return
        from rmnode import clock  # loaded only while needed: ~2 KB of the online phase's heap
        await clock.ensure(cfg.sntp_host, cfg.sntp_port, cfg.mqtt_backoff_ms)
        del sys.modules["rmnode.clock"]
        del rmnode.clock

    client = mqtt.MQTTClient(
        cfg.node_id, host, cfg.mqtt_port, ssl_context=ssl_context, server_hostname=host,
        keepalive_s=cfg.mqtt_keepalive_s, is_network_up=is_network_up, backoff_ms=cfg.mqtt_backoff_ms,
        connect_timeout_ms=cfg.mqtt_connect_timeout_ms, before_connect=set_clock)
    info = {"name": cfg.node_name, "type": cfg.node_type}
    return Online(client, MappingState(store), node_config.node_id, node_config.topic_prefix, info, on_factory_reset)
