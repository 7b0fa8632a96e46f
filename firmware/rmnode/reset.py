"""The REPL's resets: the factory reset (rmnode.node.factory_reset_from_repl: get online, report the reset,
erase, reboot) and the Wi-Fi reset (wifi_reset_from_repl: forget the network, keep the mapping state).

Its own module so that the node does not carry this code in every phase: it is imported only
when a reset is asked for.
"""

import asyncio

from rmnode import log

_TAG = "node"


async def _report(node, timeout_ms):
    """True if the cloud acknowledged the reset report; never raises on network errors."""
    from rmnode import online_reports as online_seq

    stored = node.stored_credentials()
    if stored is None:
        return False  # never provisioned, or reset already: nothing the cloud could be told
    if timeout_ms is None:
        timeout_ms = online_seq.RESET_TIMEOUT_MS
    node.wifi.connect(stored[0], stored[1])
    try:
        online = online_seq.build(node.config, node.state_store, is_network_up=node.wifi.is_connected)
    except Exception as exc:  # no usable TLS files, or a bug: the reset still erases and reboots
        log.warning(_TAG, "factory reset: %s" % exc)
        return False
    reported = False
    client_task = asyncio.create_task(online.client.run())
    try:
        await online.client.wait_connected(timeout_ms)
        reported = await online.report_factory_reset(timeout_ms)
    except Exception as exc:  # offline or broker away: reset anyway, as Espressif's node does
        log.warning(_TAG, "factory reset not reported: %s" % exc)
    await online.client.close()
    client_task.cancel()
    return reported


def factory_reset_from_repl(node_class, erase_and_reboot, root, timeout_ms, reboot):
    """See rmnode.node.factory_reset_from_repl, which passes in its Node class and Node's erase step
    `erase_and_reboot(node, reported)`."""
    node = node_class(root, reboot=_stay)
    # MicroPython keeps one task queue: without a new loop, the tasks of a main.py that Ctrl-C
    # interrupted would run again here (and its MQTT client would fight ours for the session)
    asyncio.new_event_loop()
    reported = asyncio.run(_report(node, timeout_ms))
    erase_and_reboot(node, reported)
    if reboot:
        import machine
        machine.reset()
    return reported


def _stay():
    pass  # the node's reboot while erasing: this module reboots (or not) itself


def wifi_reset_from_repl(root="/", reboot=True):
    """Forget the Wi-Fi credentials and reboot into provisioning, keeping the mapping state, as upstream's
    Wi-Fi reset (esp_rmaker_wifi_reset) keeps the user-node mapping: the node is provisioned onto a network
    again and stays its user's. Returns whether credentials were stored (reboot=False, for tests)."""
    from rmnode import credentials
    from rmnode.store import Store

    store = Store((root.rstrip("/") or "") + "/state.json")
    had = store.get(credentials.WIFI_KEY) is not None
    if had:
        store.delete(credentials.WIFI_KEY)
    log.info(_TAG, "Wi-Fi reset done (%s); rebooting into provisioning"
             % ("credentials forgotten, mapping state kept" if had else "no credentials were stored"))
    if reboot:
        import machine
        machine.reset()
    return had
