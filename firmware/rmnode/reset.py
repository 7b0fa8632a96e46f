"""Factory reset from the REPL or a script (rmnode.node.factory_reset): report, erase, reboot.

Its own module so that the node does not carry this code in every phase: it is imported only
when a reset is asked for.
"""

try:
    import asyncio
except ImportError:
    import uasyncio as asyncio

from rmnode import log

_TAG = "node"


async def _factory_reset(node_class, root, timeout_ms):
    from rmnode import online as online_seq

    node = node_class(root, reboot=lambda: None)
    reported = False
    stored = node.stored_credentials()
    if stored is not None:
        node.wifi.connect(stored[0], stored[1])
        try:
            node.online = online_seq.build(node.config, node.state_store, is_network_up=node.wifi.is_connected)
        except Exception as exc:  # no usable TLS files, or a bug: the reset still erases and reboots
            log.warning(_TAG, "factory reset: %s" % exc)
        if node.online is not None:
            client_task = asyncio.create_task(node.online.client.run())
            try:
                await node.online.client.wait_connected(timeout_ms)
                reported = await node.online.factory_reset(timeout_ms)
            except Exception as exc:  # offline or broker away: reset anyway, as Espressif's node does
                log.warning(_TAG, "factory reset not reported: %s" % exc)
            await node.online.client.close()
            client_task.cancel()
    node.erase_and_reboot(reported)
    return reported


def factory_reset(node_class, root, timeout_ms, reboot):
    """See rmnode.node.factory_reset; `node_class` is rmnode.node.Node (passed in, so that this module
    does not import the one that imports it)."""
    # MicroPython keeps one task queue: without a new loop, the tasks of a main.py that Ctrl-C
    # interrupted would run again here (and its MQTT client would fight ours for the session)
    asyncio.new_event_loop()
    reported = asyncio.run(_factory_reset(node_class, root, timeout_ms))
    if reboot:
        import machine
        machine.reset()
    return reported
