# Simulated ESP32 `esp32` module for the virtual board, with a model of ESP32_GENERIC's internal RAM
# outside the GC heap (no PSRAM). On the unix port mbedtls and the sockets allocate from the host's
# malloc, so without this model a TLS session that could never fit on a board succeeds here.
#
# The model (32-bit bytes, what an ESP32 would have):
# - POOL: internal RAM shared by MicroPython's GC heap and ESP-IDF after boot. ESP32_GENERIC's GC
#   heap starts at 56 KiB and grows (split heap) into the ESP-IDF heap up to about 110 KiB, which
#   leaves roughly 40 KB to ESP-IDF (MicroPython ports/esp32/mpconfigport.h MICROPY_GC_INITIAL_HEAP_SIZE,
#   gccollect.c; PR #13219): 110 KiB + 40 KB.
# - the GC heap is charged at the size the firmware may grow it to: the board's --heap, scaled to a
#   32-bit build (the 64-bit unix port needs HEAP_RATIO times the heap for the same objects,
#   measured with a 32-bit build of the same MicroPython: 1.38-1.40). The strict reading: as if the
#   heap had grown as far as the firmware is allowed to use it.
# - Wi-Fi: while either interface is active, ESP-IDF's driver holds its 10 static RX buffers of
#   1.6 KB plus its control blocks: WIFI_BYTES.
# - each socket open (lwIP PCB and buffers, 4-7 KB: MicroPython issue #8940): SOCKET_BYTES.
# - each TLS session: the mbedtls record buffers, 16,717 B in + 4,437 B out (the port's asymmetric
#   CONFIG_MBEDTLS_SSL_IN/OUT_CONTENT_LEN 16384/4096 plus record overhead), held until the socket
#   closes, plus ~15 KB more during the handshake (certificate parsing, ECDHE): TLS_PEAK_BYTES.
#   A session that does not fit fails the way the ESP32 port reports mbedtls's
#   MBEDTLS_ERR_SSL_ALLOC_FAILED: OSError(ENOMEM) (extmod/modtls_mbedtls.c).
# - the host can take more RAM away (VBOARD_STATE/idf_reserve, bytes; a test knob standing for
#   whatever else ESP-IDF holds at that moment).
# idf_heap_info(HEAP_DATA) answers from the model, as one region: (total, free, largest free block,
# minimum free ever), the last one being the headroom at the worst moment since power-on.
# Installed as sys.modules["esp32"] by vb_boot.py.
import os
import vfs

HEAP_DATA = 4  # MALLOC_CAP_8BIT
HEAP_EXEC = 1  # MALLOC_CAP_EXEC

POOL = 110 * 1024 + 40 * 1000
HEAP_RATIO_PERCENT = 140
WIFI_BYTES = 10 * 1600 + 6 * 1024
SOCKET_BYTES = 5 * 1024
TLS_BUFFER_BYTES = 16717 + 4437
TLS_HANDSHAKE_BYTES = 15 * 1024
TLS_PEAK_BYTES = TLS_BUFFER_BYTES + TLS_HANDSHAKE_BYTES
ENOMEM = 12

_gc_heap = int(os.getenv("VBOARD_HEAP") or 112640) * 100 // HEAP_RATIO_PERCENT
_state = vfs.VfsPosix(os.getenv("VBOARD_STATE")) if os.getenv("VBOARD_STATE") else None
# File descriptors, not socket objects: holding the objects would keep the garbage collector from
# finalising (and so closing) sockets the firmware dropped, which a board's GC does.
_sockets = set()   # fds of the sockets created by the firmware
_sessions = set()  # fds of the sockets under a TLS session
_host = vfs.VfsPosix()
_radios = []    # callables: is the Wi-Fi radio on (vb_network registers one)
_min_free = [POOL]


def _reserve():
    if _state is None:
        return 0
    try:
        f = _state.open("/idf_reserve", "r")
        try:
            return int(f.read() or 0)
        finally:
            f.close()
    except (OSError, ValueError):
        return 0


def _open(fds):
    # drop what was closed since the last look, by close() or by the GC's finaliser
    for fd in list(fds):
        try:
            _host.stat("/proc/self/fd/%d" % fd)
        except OSError:
            fds.discard(fd)
    return len(fds)


def used(extra=0):
    """Internal RAM in use outside what the GC heap already took, plus `extra` about to be allocated."""
    wifi = WIFI_BYTES if any(on() for on in _radios) else 0
    return (_gc_heap + wifi + _open(_sockets) * SOCKET_BYTES + _open(_sessions) * TLS_BUFFER_BYTES
            + _reserve() + extra)


def free(extra=0):
    left = POOL - used(extra)
    if left < _min_free[0]:
        _min_free[0] = left
    return left


def track_socket(sock):
    _sockets.add(sock.fileno())
    free()


def start_tls(sock):
    """Account for a TLS session on `sock`, or raise what an ESP32 raises when it does not fit."""
    if free(TLS_PEAK_BYTES) < 0:
        raise OSError(ENOMEM)
    _sessions.add(sock.fileno())


def track_radio(is_on):
    _radios.append(is_on)


def idf_heap_info(capabilities):
    if capabilities & HEAP_DATA:
        left = max(0, free())
        return [(POOL - _gc_heap, left, left, max(0, _min_free[0]))]
    return []


__name__ = "esp32"
