"""The node application: RainMaker-style provisioning and user-node mapping for MicroPython boards."""

VERSION = "0.1.0"
