"""A board's serial port: found by the USB bridge's VID/PID when not named, opened without resetting
the board, and every way of failing to open it turned into one line that says what to do.

Port names are whatever pyserial opens: /dev/ttyUSB0, /dev/ttyACM0, COM3, and the URLs a virtual
board offers (socket://127.0.0.1:PORT, rfc2217://127.0.0.1:PORT) or its pty path.
"""

from __future__ import annotations

import errno
from typing import Iterable, Optional

from rmkit import venv_tool
from rmkit.errors import UserError

AUTO = "auto"

# USB-to-UART bridges found on ESP32 boards, and Espressif's own USB peripherals (ESP32-S2/S3/C3/C6...)
USB_BRIDGES = {
    (0x10C4, 0xEA60): "Silicon Labs CP210x",
    (0x1A86, 0x7523): "WCH CH340",
    (0x1A86, 0x55D4): "WCH CH9102",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6010): "FTDI FT2232",
    (0x0403, 0x6014): "FTDI FT232H",
    (0x0403, 0x6015): "FTDI FT231X",
    (0x303A, 0x1001): "Espressif USB-Serial/JTAG",
    (0x303A, 0x0002): "Espressif USB CDC (ESP32-S2/S3 native USB)",
}


def _listed_ports():
    from serial.tools import list_ports

    return list_ports.comports()


def board_ports(ports: Optional[Iterable] = None) -> list[tuple[str, str]]:
    """(device, bridge description) of every serial port whose USB VID/PID is an ESP32 board's bridge."""
    found = []
    for port in _listed_ports() if ports is None else ports:
        bridge = USB_BRIDGES.get((getattr(port, "vid", None), getattr(port, "pid", None)))
        if bridge:
            serial_number = getattr(port, "serial_number", None)
            found.append((port.device, bridge + (f", serial {serial_number}" if serial_number else "")))
    return sorted(found)


def resolve_port(port: Optional[str], knob: str = "--port (make PORT=)", ports: Optional[Iterable] = None) -> str:
    """`port` as given, or, for None/"auto", the one ESP32 board plugged in (a UserError when there is
    none, or several: then the list, and a request to choose)."""
    if port and port != AUTO:
        return port
    found = board_ports(ports)
    if not found:
        raise UserError(f"no ESP32 board found on USB (looked for {', '.join(sorted(set(USB_BRIDGES.values())))}): "
                        f"plug one in, or name its serial port with {knob}")
    if len(found) > 1:
        listing = "; ".join(f"{device} ({bridge})" for device, bridge in found)
        raise UserError(f"{len(found)} ESP32 boards found: {listing}; choose one with {knob}")
    return found[0][0]


def open_port(port: str, baudrate: int = 115200, timeout: float = 0.2):
    """Open `port` without resetting the board (DTR and RTS stay released: on most ESP32 boards they
    drive EN and IO0), or raise UserError naming the fix."""
    import serial

    try:
        conn = serial.serial_for_url(port, baudrate=baudrate, timeout=timeout, do_not_open=True)
        conn.dtr = False
        conn.rts = False
        conn.open()
    except ValueError as exc:  # not a port name pyserial knows, or a malformed URL
        raise UserError(f"{port!r} is not a serial port or a socket:// / rfc2217:// URL ({exc})") from None
    except serial.SerialException as exc:
        raise UserError(describe_open_error(port, exc)) from None
    return conn


def describe_open_error(port: str, exc: Exception) -> str:
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOENT or "No such file" in text or "could not open port" in text and "[Errno 2]" in text:
        return (f"no serial port {port}: check the cable, or list ports with "
                f"`{venv_tool('python')} -m serial.tools.list_ports`")
    if code == errno.EACCES or "Permission denied" in text or "[Errno 13]" in text:
        return (f"permission denied on {port}: add yourself to the port's group "
                f"(`sudo usermod -aG dialout $USER`, then log in again) or add a udev rule")
    if code == errno.EBUSY or "busy" in text.lower() or "[Errno 16]" in text:
        return f"{port} is in use by another program (a terminal, mpremote, `make vboard`?): close it first"
    if "Connection refused" in text or "[Errno 111]" in text:
        return f"nothing listens at {port}: is the virtual board running (make vboard)?"
    return f"cannot open {port}: {text}"
