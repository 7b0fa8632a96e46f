"""Exceptions raised by the virtual board."""


class BoardError(Exception):
    """The virtual board could not do what was asked; the message names the board and the cause."""


class BoardCrashed(BoardError):
    """The MicroPython process died in a way no real ESP32 reboot explains (signal, FATAL error)."""
