"""Runs the node's online sequence under the MicroPython unix port, against a flash-like directory.

usage: micropython launch_mqtt_node.py FIRMWARE_DIR FLASH_DIR [online|reset]

Used by the MQTT/TLS heap benchmark (mqtt_heap.py) and by the tests; rmkit.benchmarks.make_flash makes
FLASH_DIR.

FLASH_DIR holds what a board's flash would: factory/factory.json (+ DER files), settings.json,
state.json (pending mapping). Log lines go to stdout. Test seams, all optional, all outside the
firmware (environment variables):
  RMNODE_TEST_NET_FILE    the station is "up" while this file exists (Wi-Fi loss / return)
  RMNODE_TEST_PAUSE_FILE  before the first mapping publish print "TEST paused" and wait for the file
  RMNODE_TEST_EXIT_MAPPED exit 0 once no mapping is pending after a connect (benchmarks)
  RMNODE_TEST_RESIDENT    comma-separated rmnode modules to import first and keep, e.g. "wifi,node":
                          the heap they hold in the real node's online phase (memory benchmark)
Mode "reset": once connected, press the factory-reset "button" (Online.reset_requested);
the reset callback clears state.json and exits, as a reboot into provisioning would.
"""

import gc
import os
import sys

sys.path.insert(0, sys.argv[1])
if ".frozen" not in sys.path:
    sys.path.append(".frozen")

import asyncio

# As firmware/main.py does before the node loads mqtt/online: collect after every 4 KiB allocated, so
# the TLS handshake's short-lived garbage does not fragment the heap (measured with mem_info(1)).
if hasattr(gc, "threshold"):  # MicroPython only
    gc.threshold(4096)

from rmnode import log, mqtt, online_reports as online

for _name in (os.getenv("RMNODE_TEST_RESIDENT") or "").split(","):
    if _name:
        __import__("rmnode." + _name)
from rmnode.config import NodeConfig
from rmnode.store import Store

FLASH = sys.argv[2]
MODE = sys.argv[3] if len(sys.argv) > 3 else "online"
MAC = b"\x24\x0a\xc4\x00\x00\x01"


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


NET_FILE = os.getenv("RMNODE_TEST_NET_FILE")
PAUSE_FILE = os.getenv("RMNODE_TEST_PAUSE_FILE")


def is_network_up():
    return NET_FILE is None or _exists(NET_FILE)


if PAUSE_FILE:
    _original_publish = mqtt.MQTTClient.publish
    _paused = []

    async def _publish_with_pause(self, topic, payload, qos=1, timeout_ms=None):
        if topic.endswith("user/mapping") and not _paused:
            _paused.append(1)
            print("TEST paused before mapping publish")
            while not _exists(PAUSE_FILE):
                await asyncio.sleep(0.01)
        return await _original_publish(self, topic, payload, qos, timeout_ms)

    mqtt.MQTTClient.publish = _publish_with_pause


async def main():
    config = NodeConfig(MAC, root=FLASH)
    store = Store(FLASH + "/state.json")
    finished = asyncio.Event()
    outcome = []

    def on_factory_reset(reported):
        store.clear()  # the node's reset erases Wi-Fi credentials and mapping state, then reboots
        outcome.append(reported)
        finished.set()

    try:
        node = online.build(config, store, is_network_up, on_factory_reset)
    except online.OnlineConfigError as exc:
        print("TEST config error: %s" % exc)
        sys.exit(3)
    task = asyncio.create_task(node.run())
    if MODE == "reset":
        await node.client.wait_connected()
        node.reset_requested.set()
        await finished.wait()
        print("TEST factory reset finished, reported=%s" % outcome[0])
    elif os.getenv("RMNODE_TEST_EXIT_MAPPED"):
        while not (node.client.connects and node.mapping.pending() is None):
            await asyncio.sleep(0.02)
        print("TEST mapped")
    else:
        await task
    task.cancel()
    await node.client.close()


# on no more C stack than an ESP32 gives MicroPython (esp32_stack.py, next to this file)
sys.path.append(__file__.rsplit("/", 1)[0] if "/" in __file__ else ".")
import esp32_stack  # noqa: E402

esp32_stack.run(asyncio.run, main())
