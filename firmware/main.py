"""Entry point on the board: build the node from its flash and run it until reset."""

import sys

try:
    import asyncio
except ImportError:
    import uasyncio as asyncio

from rmnode import log
from rmnode.node import Node

try:
    asyncio.run(Node().run())
except KeyboardInterrupt:
    log.info("main", "interrupted; at the REPL")
except Exception as exc:  # a bug, not bad input: say so loudly, then reboot like an ESP32 panic would
    log.error("main", "node stopped on an unexpected error")
    sys.print_exception(exc)
    import time
    import machine
    time.sleep(2)
    machine.reset()
