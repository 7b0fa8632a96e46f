"""Entry point on the board: build the node from its flash and run it until reset."""

import gc
import sys

import asyncio

from rmnode import log
from rmnode.node import Node

# Collect after every 4 KiB allocated instead of only when the heap is full: the X25519 and TLS
# work leaves short-lived garbage between long-lived objects, and a heap that is only collected
# when exhausted ends up free only in small pieces.
gc.threshold(4096)

try:
    asyncio.run(Node().run())
except KeyboardInterrupt:
    from rmnode.board import watchdog_at_repl

    watchdog_at_repl()  # nothing feeds it at the REPL, and it cannot be stopped
    log.info("main", "interrupted; at the REPL (watchdog: an hour)")
except Exception as exc:  # a bug, not bad input: say so loudly, then reboot like an ESP32 panic would
    log.error("main", "node stopped on an unexpected error")
    sys.print_exception(exc)
    import time
    import machine
    time.sleep(2)
    machine.reset()
