"""rmnode.log: the line format and its sink; the BLE transport's held lines (rmnode.ble.HeldLines), printed by the
main task (docs/protocol.md 1.2: printing more than 20 characters releases the GIL on an ESP32)."""

from rmnode import ble, log
from fwtest import check, equal


def _printed(module, fn):
    """What `fn` makes `module` print (its module-level `print` replaced: MicroPython cannot swap sys.stdout)."""
    lines = []
    module.print = lambda text: lines.append(text)
    try:
        fn()
    finally:
        del module.print
    return lines


def test_lines_go_out_at_once_without_a_sink():
    lines = _printed(log, lambda: log.info("tag", "hello"))
    equal(len(lines), 1, "one line")
    check(lines[0].startswith("I (") and lines[0].endswith(") tag: hello"), lines[0])


def test_held_lines_wait_for_flush_in_order():
    held = ble.HeldLines()

    def in_handler():
        log.sink = held.take
        held.hold()
        try:
            log.info("ble", "one")
            log.warning("ble", "two")
        finally:
            held.unhold()
            log.sink = None

    equal(_printed(log, in_handler), [], "nothing printed while held")
    lines = _printed(ble, held.flush)
    equal([line.split(": ", 1)[1] for line in lines], ["one", "two"], "printed by flush, in order")
    check(lines[1].startswith("W ("), "severity kept")
    equal(_printed(ble, held.flush), [], "printed once")


def test_only_the_holding_thread_is_held():
    held = ble.HeldLines()
    log.sink = held.take
    try:
        lines = _printed(log, lambda: log.info("main", "not held"))
    finally:
        log.sink = None
    equal(len(lines), 1, "printed at once: nobody holds")


def test_too_many_held_lines_are_counted_not_kept():
    held = ble.HeldLines(size=4)

    def in_handler():
        log.sink = held.take
        held.hold()
        try:
            for i in range(10):
                log.info("ble", "line %d" % i)
        finally:
            held.unhold()
            log.sink = None

    _printed(log, in_handler)
    lines = _printed(ble, held.flush)
    equal([line.split(": ", 1)[1] for line in lines[:4]], ["line 0", "line 1", "line 2", "line 3"], "the first four")
    equal(lines[4], "log: 6 lines dropped while held", "the rest counted")
