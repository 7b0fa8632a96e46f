"""Exceptions raised by the virtual board."""


class BoardError(Exception):
    """The virtual board could not do what was asked; the message names the board and the cause."""


class BoardCrashed(BoardError):
    """The MicroPython process died in a way no real ESP32 reboot explains (signal, FATAL error)."""


class BoardFault(BoardError):
    """The firmware did what an ESP32 does not survive, though the virtual board does: a BLE IRQ handler
    that released the GIL (sim/vb_irq.py prints a `vboard FAULT:` line). The board carries on; on an
    ESP32 the damage would be silent heap corruption."""
