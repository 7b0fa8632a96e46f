# Simulated `tls` for the virtual board: the unix port's mbedtls contexts, handed the unix port's socket under
# the firmware's (vb_socket wraps each socket so that a BLE IRQ handler's calls on it can be checked; mbedtls
# reads and writes through the unix socket's C stream functions, so it must get that one). Every TLS session
# is charged to the internal-RAM model by the model itself, in C (esp32_ram.c interposes mbedtls). The
# micropython-lib `ssl` module wraps this one, so firmware using either is covered.
# Installed as sys.modules["tls"] by vb_boot.py, before anything imports ssl.
from tls import *  # noqa: F401,F403 - PROTOCOL_*, CERT_*, MBEDTLS_VERSION
import tls as _unix

import vb_socket


class SSLContext:
    def __init__(self, protocol):
        self._context = _unix.SSLContext(protocol)

    @property
    def verify_mode(self):
        return self._context.verify_mode

    @verify_mode.setter
    def verify_mode(self, value):
        self._context.verify_mode = value

    def load_cert_chain(self, cert, key):
        return self._context.load_cert_chain(cert, key)

    def load_verify_locations(self, cadata):
        return self._context.load_verify_locations(cadata)

    def set_ciphers(self, ciphers):
        return self._context.set_ciphers(ciphers)

    def get_ciphers(self):
        return self._context.get_ciphers()

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, server_hostname=None):
        return self._context.wrap_socket(vb_socket.native(sock), server_side=server_side,
                                         do_handshake_on_connect=do_handshake_on_connect,
                                         server_hostname=server_hostname)


__name__ = "tls"
