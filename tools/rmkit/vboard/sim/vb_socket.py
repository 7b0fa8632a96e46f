# Simulated `socket` for the virtual board: the unix port's sockets (real, on the host's network),
# each one counted by the internal-RAM model (vb_esp32) while it is open, as lwIP's PCB and buffers
# take ESP-IDF heap on a board. Sockets returned by accept() are not counted (provisioning only).
#
# In a BLE IRQ handler (vb_irq) every call that the ESP32 port makes with the GIL released is a
# fault: getaddrinfo, connect, accept, send/sendall/sendto/write, and the reads (recv, recvfrom,
# read, readinto, readline) when no data is waiting, as _socket_read_data checks first
# (ports/esp32/modsocket.c, v1.26.1). lwIP's socket calls wait for its tcpip task meanwhile.
# Only calls made from Python are seen: a TLS session's own reads and writes of its socket, and the
# sockets accept() returns (the unix port's own objects), are not.
# Installed as sys.modules["socket"] by vb_boot.py.
from socket import *  # noqa: F401,F403 - constants, ...
import socket as _unix
import select as _select

import vb_esp32
import vb_irq

_SOURCE = "ports/esp32/modsocket.c"


def _released(call):
    vb_irq.released_gil(call, _SOURCE)


def _reading(sock, call):
    if vb_irq.in_handler():
        poller = _select.poll()
        poller.register(sock, _select.POLLIN)
        if not poller.poll(0):
            _released(call)


class socket(_unix.socket):
    # a subclass, not a wrapper: select.poll() and asyncio see the same object, and TLS wraps it
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0):
        super().__init__(af, type, proto)
        vb_esp32.track_socket(self)

    def connect(self, address):
        _released("socket.connect()")
        return super().connect(address)

    def accept(self):
        _released("socket.accept()")
        return super().accept()

    def send(self, data):
        _released("socket.send()")
        return super().send(data)

    def sendall(self, data):
        _released("socket.sendall()")
        return super().sendall(data)

    def sendto(self, data, address):
        _released("socket.sendto()")
        return super().sendto(data, address)

    def write(self, *args):
        _released("socket.write()")
        return super().write(*args)

    def recv(self, size, *flags):
        _reading(self, "socket.recv()")
        return super().recv(size, *flags)

    def recvfrom(self, size, *flags):
        _reading(self, "socket.recvfrom()")
        return super().recvfrom(size, *flags)

    def read(self, *size):
        _reading(self, "socket.read()")
        return super().read(*size)

    def readinto(self, *args):
        _reading(self, "socket.readinto()")
        return super().readinto(*args)

    def readline(self, *size):
        _reading(self, "socket.readline()")
        return super().readline(*size)


def getaddrinfo(*args):
    _released("socket.getaddrinfo()")
    return _unix.getaddrinfo(*args)


__name__ = "socket"
