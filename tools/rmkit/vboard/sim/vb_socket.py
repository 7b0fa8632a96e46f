# Simulated `socket` for the virtual board: the unix port's sockets (real, on the host's network),
# each one charged to the internal-RAM model (vb_esp32) while it is open, as lwIP's connection state
# takes ESP-IDF heap on a board; the model frees it when the descriptor is closed (by close() or by
# the GC's finaliser). Sockets returned by accept() are not charged (provisioning only).
#
# In a BLE IRQ handler (vb_irq) every call that the ESP32 port makes with the GIL released is a
# fault: getaddrinfo, connect, accept, send/sendall/sendto/write, and the reads (recv, recvfrom,
# read, readinto, readline) when no data is waiting, as _socket_read_data checks first
# (ports/esp32/modsocket.c, v1.26.1). lwIP's socket calls wait for its tcpip task meanwhile.
# So firmware gets a Socket around the unix port's, not the unix port's itself, and not a subclass
# of it: MicroPython hands a subclass's instance to the base type's C stream functions, which then
# read it as a socket of their own (tls writes its records to fd 1). The C code that takes sockets
# gets the unix port's back: vb_tls (a TLS session's own reads and writes are not checked) and
# vb_select (which gives poll results back as the firmware's objects).
# Installed as sys.modules["socket"] by vb_boot.py.
from socket import *  # noqa: F401,F403 - constants, ...
import socket as _unix
import select as _select

import vb_esp32
import vb_irq

_SOURCE = "ports/esp32/modsocket.c"


def _released(call):
    vb_irq.released_gil(call, _SOURCE)


def native(sock):
    """The unix port's socket under `sock` (a Socket), or `sock` itself."""
    return getattr(sock, "_native", sock)


class Socket:
    def __init__(self, sock):
        self._native = sock

    def __repr__(self):
        return repr(self._native)

    def _reading(self, call):
        if vb_irq.in_handler():
            poller = _select.poll()
            poller.register(self._native, _select.POLLIN)
            if not poller.poll(0):
                _released(call)

    def connect(self, address):
        _released("socket.connect()")
        return self._native.connect(address)

    def accept(self):
        _released("socket.accept()")
        sock, address = self._native.accept()
        return Socket(sock), address

    def send(self, data):
        _released("socket.send()")
        return self._native.send(data)

    def sendall(self, data):
        _released("socket.sendall()")
        return self._native.sendall(data)

    def sendto(self, data, address):
        _released("socket.sendto()")
        return self._native.sendto(data, address)

    def write(self, *args):
        _released("socket.write()")
        return self._native.write(*args)

    def recv(self, *args):
        self._reading("socket.recv()")
        return self._native.recv(*args)

    def recvfrom(self, *args):
        self._reading("socket.recvfrom()")
        return self._native.recvfrom(*args)

    def read(self, *args):
        self._reading("socket.read()")
        return self._native.read(*args)

    def readinto(self, *args):
        self._reading("socket.readinto()")
        return self._native.readinto(*args)

    def readline(self, *args):
        self._reading("socket.readline()")
        return self._native.readline(*args)

    # the rest waits for nothing on an ESP32 either
    def bind(self, address):
        return self._native.bind(address)

    def listen(self, *backlog):
        return self._native.listen(*backlog)

    def setblocking(self, flag):
        return self._native.setblocking(flag)

    def settimeout(self, value):
        return self._native.settimeout(value)

    def setsockopt(self, *args):
        return self._native.setsockopt(*args)

    def fileno(self):
        return self._native.fileno()

    def makefile(self, *args, **kwargs):
        return self

    def close(self):
        return self._native.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._native.close()


def socket(af=AF_INET, type=SOCK_STREAM, proto=0):
    sock = _unix.socket(af, type, proto)
    if not vb_esp32.charge_socket(sock.fileno()):
        sock.close()
        raise OSError(vb_esp32.ENOBUFS)  # what the ESP32 port raises when lwIP has no memory
    return Socket(sock)


def getaddrinfo(*args):
    _released("socket.getaddrinfo()")
    return _unix.getaddrinfo(*args)


__name__ = "socket"
