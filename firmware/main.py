"""Entry point on the board: build the node from its flash config and run it."""

from rmnode import log

log.info("main", "rmnode starting")
