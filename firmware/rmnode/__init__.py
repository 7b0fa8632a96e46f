"""The node application: RainMaker-style provisioning and user-node mapping for MicroPython boards."""

VERSION = "0.1.0"
# The node trusts no clock that reads earlier than this (rmnode.clock): certificates are checked
# against the date, and a board's RTC starts at 2000-01-01. Moved forward with each release.
BUILD_DATE = (2026, 11, 30)
