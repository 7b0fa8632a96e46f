"""The node's online phase: keep the station up and run the online reports (rmnode.online_reports: MQTT,
config and mapping publish).

Loaded only once the node has Wi-Fi credentials (rmnode.node imports it then), so the provisioning
phase, the one with the least heap to spare, never carries this code.
"""

import asyncio

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import log
from rmnode.wifi import STA_DISCONNECTED

_TAG = const("node")
_REJOIN_FIRST_MS = const(2000)
_REJOIN_CAP_MS = const(60000)


async def run_online(node, on_factory_reset):
    """Join the stored network (already started by the node), then run the online sequence for good.
    on_factory_reset(reported): the node's last step of a reset-button reset, once the cloud was told."""
    keeper = asyncio.create_task(_keep_station_up(node))
    try:
        await _go_online(node, on_factory_reset)
    finally:
        keeper.cancel()


async def _keep_station_up(node):
    """Rejoin with backoff when the station failed or was dropped (the driver retries a lost link itself)."""
    wifi = node.wifi
    delay = _REJOIN_FIRST_MS
    while True:
        await asyncio.sleep(1)
        if wifi.is_connected():
            delay = _REJOIN_FIRST_MS
            continue
        state = wifi.status().state
        if state >= STA_DISCONNECTED:  # Disconnected or ConnectionFailed, the two states after it
            stored = node.stored_credentials()
            if stored is None:
                continue
            log.info(_TAG, "station down; rejoining %s in %d ms" % (log.shown(stored[0]), delay))
            await asyncio.sleep(delay / 1000)
            wifi.connect(stored[0], stored[1])
            delay = min(delay * 2, _REJOIN_CAP_MS)


async def _go_online(node, on_factory_reset):
    from rmnode import online_reports as online_seq

    cfg = node.config
    try:
        node.online = online_seq.build(cfg, node.state_store, is_network_up=node.wifi.is_connected,
                                       on_factory_reset=on_factory_reset)
    except Exception as exc:  # OnlineConfigError, or a bug: either way no boot loop, nothing lost
        log.error(_TAG, "cannot go online: %s; the pending mapping stays stored" % exc)
        while True:
            await asyncio.sleep(3600)
    node.enter("online", "%s:%d" % (cfg.mqtt_host, cfg.mqtt_port))
    await node.online.run()
