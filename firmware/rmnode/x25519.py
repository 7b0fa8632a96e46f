"""X25519 Diffie-Hellman (RFC 7748) in pure Python on big ints, for Security 1 (docs/protocol.md 3.3).

Not constant-time: MicroPython's big ints give no such guarantee. A provisioning session is short
and local, and each handshake uses a fresh device key, which limits what a timing attacker
on the SoftAP could learn.
"""

import os

_P = (1 << 255) - 19
_A24 = 121665
_BASE_POINT = b"\x09" + bytes(31)


class X25519Error(ValueError):
    """A key of the wrong size, or a peer key that yields the all-zero shared secret."""


def _decode_scalar(k):
    n = bytearray(k)
    # RFC 7748 section 5: clamp
    n[0] &= 248
    n[31] &= 127
    n[31] |= 64
    return int.from_bytes(bytes(n), "little")


def _decode_u(u):
    # RFC 7748 section 5: ignore the top bit; non-canonical values (>= p) are reduced
    return int.from_bytes(u, "little") & ((1 << 255) - 1)


def scalarmult(k, u):
    """X25519(k, u) for 32-byte little-endian k and u; returns 32 bytes."""
    if len(k) != 32 or len(u) != 32:
        raise X25519Error("X25519 needs 32-byte inputs, got %d and %d" % (len(k), len(u)))
    p = _P
    k = _decode_scalar(k)
    x1 = _decode_u(u) % p
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    # RFC 7748 section 5 Montgomery ladder
    for t in range(254, -1, -1):
        k_t = (k >> t) & 1
        swap ^= k_t
        if swap:
            x2, x3 = x3, x2
            z2, z3 = z3, z2
        swap = k_t
        a = x2 + z2
        aa = a * a % p
        b = x2 - z2
        bb = b * b % p
        e = aa - bb
        c = x3 + z3
        d = x3 - z3
        da = d * a % p
        cb = c * b % p
        x3 = (da + cb) % p
        x3 = x3 * x3 % p
        z3 = (da - cb) % p
        z3 = x1 * (z3 * z3 % p) % p
        x2 = aa * bb % p
        z2 = e * (aa + _A24 * e) % p
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, p - 2, p) % p).to_bytes(32, "little")


def public_key(private_key):
    return scalarmult(private_key, _BASE_POINT)


def generate_private_key():
    return os.urandom(32)


def shared_secret(private_key, peer_public_key):
    """X25519 shared secret; refuses low-order peer keys (all-zero result), as mbedtls does."""
    secret = scalarmult(private_key, peer_public_key)
    if secret == bytes(32):
        raise X25519Error("peer public key gives an all-zero shared secret")
    return secret
