"""The board's own hardware, served by one task in every phase: the task watchdog, fed while the event loop
runs, and the BOOT button (GPIO0), whose long holds reset Wi-Fi (3 s) or the node (10 s).

Watchdog (docs/protocol.md 5.5): a call that never returns (a driver, a lock, a loop without await) stops the
event loop, so the feed stops and the board resets after _WDT_TIMEOUT_MS; the node boots again with its
credentials and pending mapping from flash. A task waiting forever while the loop runs is not a hang to it:
the node's own timeouts (MQTT keepalive, connect timeout, backoff) cover those.

Button (docs/protocol.md 5.5), as RainMaker's examples wire it (esp-rainmaker
examples/common/rmaker_app_reset/app_reset.c with examples/switch/main/app_driver.c: GPIO0, active low,
WIFI_RESET_BUTTON_TIMEOUT 3, FACTORY_RESET_BUTTON_TIMEOUT 10): the action is taken on release, by how long
the button was held, and a log line says when each hold time is reached, so a person knows when to let go.
The pin's IRQ handler only notes when an edge came: the ESP32 port runs it scheduled on the main task
(ports/esp32/machine_pin.c), where changing asyncio's state is not safe. The task polls what it noted, waits
until the level is stable (debounced) and lets rmnode.button, loaded at the first press, time the hold and act.

One task for both, not two, and only the feeding and the polling resident: every byte here is held in each
phase's tight heap.
"""

import asyncio

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import log
from rmnode.log import ticks_diff, ticks_ms

_TAG = const("board")
# Longer than anything the node legitimately blocks the event loop for, measured at ESP32 speed on the
# virtual board: a Security 1 Command0 (two X25519) 4.3 s, a blocking TLS handshake 1.6 s, a Wi-Fi scan
# 1.5 s (1.5-3 s on a board), a P-256 signature 1.3 s; and lwIP's DNS lookup, which getaddrinfo waits for:
# up to 7 s a server without an answer (lwIP dns.c, DNS_MAX_RETRIES 4: 1+1+2+3 s), 21 s with three.
_WDT_TIMEOUT_MS = const(30000)
_FEED_MS = const(1000)
# At the REPL nothing feeds it, and the ESP32 port cannot stop it (ports/esp32/machine_wdt.c has no
# deinit; a soft reset keeps it): a person or a tool gets an hour, after which a board left at the REPL
# resets and runs the node again.
_REPL_TIMEOUT_MS = const(3600000)
_BUTTON = const(0)  # GPIO0, a DevKit's BOOT button; pressed pulls it low
# A level counts once it has not changed for this long: contacts bounce for a few ms (espressif/button, which
# app_reset uses, needs 2 equal scans 5 ms apart: Kconfig BUTTON_DEBOUNCE_TICKS, BUTTON_PERIOD_TIME_MS); shorter
# presses are noise
_DEBOUNCE_MS = const(30)
_POLL_MS = const(100)


def start(node):
    """Arm the watchdog now, before anything that could hang, wire the button, and start the task that feeds
    the one and serves the other for the node's life (rmnode.node.Node.run): a release after a long enough
    hold awaits node.wifi_reset() or calls node.reset_button_pressed(). None where the board has no
    machine.WDT or Pin (the unix port, CPython)."""
    try:
        import machine
        wdt = machine.WDT(timeout=_WDT_TIMEOUT_MS)  # after a soft reset: the port's running one, reconfigured
        pin = machine.Pin(_BUTTON, machine.Pin.IN, machine.Pin.PULL_UP)
    except (ImportError, AttributeError):
        return None
    log.info(_TAG, "watchdog on, %d ms%s" % (_WDT_TIMEOUT_MS, " (this boot follows a watchdog reset)"
                                           if machine.reset_cause() == machine.WDT_RESET else ""))
    edges = [0, 0, 0]  # ticks of the last edge, ticks the press began, 1 while a press is being timed

    def noted(_pin):
        now = ticks_ms()
        edges[0] = now
        if not edges[2]:
            edges[1] = now
            edges[2] = 1

    pin.irq(noted, machine.Pin.IRQ_FALLING | machine.Pin.IRQ_RISING)
    return asyncio.create_task(_serve(node, wdt, pin, edges))


async def _serve(node, wdt, pin, edges):
    fed = ticks_ms()
    wdt.feed()
    while True:
        await asyncio.sleep_ms(_POLL_MS)
        now = ticks_ms()
        if ticks_diff(now, fed) >= _FEED_MS:
            fed = now
            wdt.feed()
        if edges[2] and ticks_diff(now, edges[0]) >= _DEBOUNCE_MS:
            # the hold timing is loaded at the first press: most boards are never pressed, and every byte
            # resident here is missing from the phases' heap
            from rmnode import button

            await button.step(node, pin, edges, now)


def watchdog_at_repl():
    """main.py, when interrupted: the REPL gets the watchdog's long timeout (the port reconfigures its one
    watchdog, ports/esp32/machine_wdt.c)."""
    try:
        import machine
        machine.WDT(timeout=_REPL_TIMEOUT_MS)
    except (ImportError, AttributeError):
        pass
