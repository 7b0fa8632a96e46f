# Simulated `socket` for the virtual board: the unix port's sockets (real, on the host's network),
# each one counted by the internal-RAM model (vb_esp32) while it is open, as lwIP's PCB and buffers
# take ESP-IDF heap on a board. Sockets returned by accept() are not counted (provisioning only).
# Installed as sys.modules["socket"] by vb_boot.py.
from socket import *  # noqa: F401,F403 - constants, getaddrinfo, ...
import socket as _unix

import vb_esp32


def socket(af=AF_INET, type=SOCK_STREAM, proto=0):
    sock = _unix.socket(af, type, proto)
    vb_esp32.track_socket(sock)
    return sock


__name__ = "socket"
