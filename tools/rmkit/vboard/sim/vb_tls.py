# Simulated `tls` for the virtual board: the unix port's mbedtls contexts, with every TLS session
# charged to the internal-RAM model (vb_esp32) from wrap_socket() until its socket closes; a session
# that does not fit fails as on an ESP32 (OSError ENOMEM). The micropython-lib `ssl` module wraps
# this one, so firmware using either is covered.
# Installed as sys.modules["tls"] by vb_boot.py, before anything imports ssl.
from tls import *  # noqa: F401,F403 - PROTOCOL_*, CERT_*, MBEDTLS_VERSION
import tls as _unix

import vb_esp32
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
        # a refused session leaves the socket to the caller; asyncio.open_connection() drops it
        # unclosed, and the GC's finaliser closes it at the next collection, as on a board
        vb_esp32.start_tls(sock)
        # the unix port's socket: its C stream functions are what mbedtls reads and writes through
        return self._context.wrap_socket(vb_socket.native(sock), server_side=server_side,
                                         do_handshake_on_connect=do_handshake_on_connect,
                                         server_hostname=server_hostname)


__name__ = "tls"
