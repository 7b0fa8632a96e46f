"""The BOOT button's hold timing (docs/protocol.md 5.5), loaded by rmnode.board's task at the first press: the
action is taken on release, by how long the button was held (3 s: Wi-Fi reset, 10 s: factory reset, as
esp-rainmaker examples/common/rmaker_app_reset/app_reset.c with WIFI_RESET_BUTTON_TIMEOUT 3 and
FACTORY_RESET_BUTTON_TIMEOUT 10), and a log line says when each hold time is reached, so a person knows when
to let go."""

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import log
from rmnode.log import ticks_diff

_TAG = const("board")  # one console tag for the board's hardware (rmnode.board)
_WIFI_RESET_MS = const(3000)
_FACTORY_RESET_MS = const(10000)
_NOISE_MS = const(30)  # rmnode.board's debounce: a shorter press is noise, not a press

_told = [0]  # the hold times already announced for this press: 1 Wi-Fi reset, 2 factory reset


async def step(node, pin, edges, now):
    """One poll of a press being timed (edges as rmnode.board notes them: ticks of the last edge, ticks the
    press began, 1 while a press is being timed), its level stable: announce a hold time reached, or act on
    the release."""
    if not pin.value():  # held
        held = ticks_diff(now, edges[1])
        if held >= _FACTORY_RESET_MS and _told[0] < 2:
            _told[0] = 2
            log.info(_TAG, "button held %d s: release for a factory reset" % (held // 1000))
        elif held >= _WIFI_RESET_MS and not _told[0]:
            _told[0] = 1
            log.info(_TAG, "button held %d s: release now for a Wi-Fi reset, keep holding for a factory reset"
                     % (held // 1000))
        return
    held = ticks_diff(edges[0], edges[1])  # released: the last edge was the release
    edges[2] = _told[0] = 0
    if held >= _FACTORY_RESET_MS:
        log.info(_TAG, "button released after %d ms: factory reset" % held)
        node.reset_button_pressed()
    elif held >= _WIFI_RESET_MS:
        log.info(_TAG, "button released after %d ms: Wi-Fi reset" % held)
        await node.wifi_reset()
    elif held >= _NOISE_MS:
        log.info(_TAG, "button released after %d ms: no reset (hold 3 s for Wi-Fi, 10 s for factory)" % held)
