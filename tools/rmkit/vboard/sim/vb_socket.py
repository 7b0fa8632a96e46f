# Simulated `socket` for the virtual board: the unix port's sockets (real, on the host's network),
# each one charged to the internal-RAM model (vb_esp32) while it is open, as lwIP's connection state
# takes ESP-IDF heap on a board; the model frees it when the descriptor is closed (by close() or by
# the GC's finaliser). Sockets returned by accept() are not charged (provisioning only).
# Installed as sys.modules["socket"] by vb_boot.py.
from socket import *  # noqa: F401,F403 - constants, getaddrinfo, ...
import socket as _unix

import vb_esp32


def socket(af=AF_INET, type=SOCK_STREAM, proto=0):
    sock = _unix.socket(af, type, proto)
    if not vb_esp32.charge_socket(sock.fileno()):
        sock.close()
        raise OSError(vb_esp32.ENOBUFS)  # what the ESP32 port raises when lwIP has no memory
    return sock


__name__ = "socket"
