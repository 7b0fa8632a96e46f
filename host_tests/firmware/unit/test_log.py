"""rmnode.log: the line format, and lines held while a BLE IRQ handler runs, printed by the main task
(docs/protocol.md 1.2: printing more than 20 characters releases the GIL on an ESP32)."""

from rmnode import log
from fwtest import check, equal


def _printed(fn):
    """What `fn` makes rmnode.log print (its module-level `print` replaced: MicroPython cannot swap sys.stdout)."""
    lines = []
    log.print = lambda text: lines.append(text)
    try:
        fn()
    finally:
        del log.print
    return lines


def test_lines_go_out_at_once_unless_held():
    lines = _printed(lambda: log.info("tag", "hello"))
    equal(len(lines), 1, "one line")
    check(lines[0].startswith("I (") and lines[0].endswith(") tag: hello"), lines[0])


def test_held_lines_wait_for_flush_in_order():
    def held():
        log.hold()
        try:
            log.info("ble", "one")
            log.warning("ble", "two")
        finally:
            log.unhold()

    equal(_printed(held), [], "nothing printed while held")
    lines = _printed(log.flush)
    equal([line.split(": ", 1)[1] for line in lines], ["one", "two"], "printed by flush, in order")
    check(lines[1].startswith("W ("), "severity kept")
    equal(_printed(log.flush), [], "printed once")


def test_too_many_held_lines_are_counted_not_kept():
    def held():
        log.hold()
        try:
            for i in range(40):
                log.info("ble", "line %d" % i)
        finally:
            log.unhold()

    _printed(held)
    lines = _printed(log.flush)
    check(len(lines) < 40, "bounded")
    check(lines[-1].startswith("log: ") and "dropped while held" in lines[-1], lines[-1])
    equal(lines[0].split(": ", 1)[1], "line 0", "the first ones kept")
