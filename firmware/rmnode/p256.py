"""ECDSA P-256 signing over SHA-256 with RFC 6979 nonces, for the node's challenge response.

sign(private_key, message) is ECDSA over SHA-256(message) with the node's P-256 scalar (read from its
DER key by rmnode.p256_key), returned as the DER ECDSA-Sig-Value SEQUENCE { INTEGER r, INTEGER s }
that mbedtls_pk_sign writes; s is left as computed (high or low), which verifiers accept. The nonce
is RFC 6979's (HMAC-SHA256 written here: an ESP32's MicroPython has no hmac module): a function of
key and message, so no random source is needed and different messages never share a k; it is the k
OpenSSL's deterministic ECDSA picks, so signatures equal `cryptography`'s byte for byte.

Its time, heap, allocations and stack, and why each choice below: docs/measurements.md, "P-256 signing";
`make bench` times it at ESP32 speed. A signature allocates many short-lived ints (every big-int
operation allocates), so on a board the GC runs several times per signature.
How: R = kG by a fixed-base comb (4 teeth 64 bits apart, 64 columns: 63 doublings and at most 64
additions of a precomputed affine point) in Jacobian coordinates, `%` for every reduction (mpz's `%`
beats P-256's special-form reduction written in Python), and two inversions by the extended Euclidean
algorithm (faster than pow(x, p-2, p)): Z^-1 mod p for R's x, and k^-1 mod n.

Not constant-time: MicroPython's big ints give no such guarantee, and the comb's additions depend on
k's bits. Side channels are out of scope: the key never leaves the node, and only a client that also
holds the PoP gets to time a signature.
"""

import hashlib

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

# P-256 (SEC 2 secp256r1 = NIST P-256): the field prime and the group order
_P = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF)
_N = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551)
# HMAC's inner and outer pads over the 32 bytes of an RFC 6979 key, as ints: one XOR pads the key
_IPAD_INT = const(0x3636363636363636363636363636363636363636363636363636363636363636)
_OPAD_INT = const(0x5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C)
# ... and over the 32 zero bytes that fill the key up to SHA-256's 64-byte block
_IPAD_TAIL = b"\x36" * 32
_OPAD_TAIL = b"\x5c" * 32

# The comb's table: entry i (1-15) is sum(2^(64 t) G for each bit t set in i), affine, as x || y,
# 32 bytes each, big-endian; entry i starts at byte 64 (i - 1). Four teeth, and a bytes constant rather
# than ints or points computed at import: docs/measurements.md, "P-256 signing", says why.
# host_tests/firmware/test_fw_p256.py checks every point against `cryptography`.
_COMB = (
    # 1: G
    b"\x6b\x17\xd1\xf2\xe1\x2c\x42\x47\xf8\xbc\xe6\xe5\x63\xa4\x40\xf2"
    b"\x77\x03\x7d\x81\x2d\xeb\x33\xa0\xf4\xa1\x39\x45\xd8\x98\xc2\x96"
    b"\x4f\xe3\x42\xe2\xfe\x1a\x7f\x9b\x8e\xe7\xeb\x4a\x7c\x0f\x9e\x16"
    b"\x2b\xce\x33\x57\x6b\x31\x5e\xce\xcb\xb6\x40\x68\x37\xbf\x51\xf5"
    # 2: 2^64 G
    b"\x0f\xa8\x22\xbc\x28\x11\xaa\xa5\x84\x92\x59\x2e\x32\x6e\x25\xde"
    b"\x29\x49\x3b\xaa\xad\x65\x1f\x7e\x90\xe7\x5c\xb4\x8e\x14\xdb\x63"
    b"\xbf\xf4\x4a\xe8\xf5\xdb\xa8\x0d\x6f\x4a\xd4\xbc\xb3\xdf\x18\x8b"
    b"\x34\xb1\xa6\x50\x50\xfe\x82\xf5\xe4\x11\x24\x54\x5f\x46\x2e\xe7"
    # 3: G + 2^64 G
    b"\x30\x0a\x4b\xbc\x89\xd6\x72\x6f\xb2\x57\xc0\xde\x95\xe0\x27\x89"
    b"\xe9\x6c\x98\xfd\x0d\x35\xf1\xfa\x93\x39\x1c\xe2\x09\x79\x92\xaf"
    b"\x72\xaa\xc7\xe0\xd0\x9b\x46\x44\x7f\x1d\xdb\x25\xff\x1e\x3c\x6f"
    b"\x5b\xb1\xee\xad\xa9\xd8\x06\xa5\xaa\x54\xa2\x91\xc0\x81\x27\xa0"
    # 4: 2^128 G
    b"\x44\x7d\x73\x9b\xee\xdb\x5e\x67\xfb\x98\x2f\xd5\x88\xc6\x76\x6e"
    b"\xfc\x35\xff\x7d\xc2\x97\xea\xc3\x57\xc8\x4f\xc9\xd7\x89\xbd\x85"
    b"\x2d\x48\x25\xab\x83\x41\x31\xee\xe1\x2e\x9d\x95\x3a\x4a\xaf\xf7"
    b"\x3d\x34\x9b\x95\xa7\xfa\xe5\x00\x0c\x7e\x33\xc9\x72\xe2\x5b\x32"
    # 5: G + 2^128 G
    b"\xef\x95\x19\x32\x8a\x9c\x72\xff\xdd\xc6\x06\x8b\xb9\x1d\xfc\x60"
    b"\xef\x7f\xbd\x2b\x1a\x0a\x11\xb7\x13\x94\x9c\x93\x2a\x1d\x36\x7f"
    b"\x61\x1e\x9f\xc3\x7d\xbb\x2c\x9b\xc1\xee\x98\x07\x02\x2c\x21\x9c"
    b"\x23\x18\x3b\x08\x95\xca\x17\x40\x19\x60\x35\xa7\x73\x76\xd8\xa8"
    # 6: 2^64 G + 2^128 G
    b"\x55\x06\x63\x79\x7b\x51\xf5\xd8\x7d\xea\x64\x82\xe1\x12\x38\xbf"
    b"\x29\x36\xdf\x5e\xc6\xc9\xbc\x36\xca\xe2\xb1\x92\x0b\x57\xf4\xbc"
    b"\x15\x71\x64\x84\x8a\xec\xb8\x51\x0a\xfa\x40\x01\x8d\x9d\x50\xe5"
    b"\x9f\xb3\xd5\x76\xdb\xde\xfb\xe1\x44\xff\xe2\x16\x34\x8a\x96\x4c"
    # 7: G + 2^64 G + 2^128 G
    b"\xeb\x5d\x77\x45\xb2\x11\x41\xea\xa2\xe8\xf4\x83\xf4\x3e\x43\x91"
    b"\x7c\xcd\x84\xe7\x0d\x71\x5f\x26\xe4\x8e\xca\xff\xfc\x5c\xde\x01"
    b"\xea\xfd\x72\xeb\xdb\xec\xc1\x7b\x09\x90\xe6\xa1\x58\x00\x6c\xee"
    b"\x85\xf2\x2c\xfe\x28\x44\xb6\x45\xca\xc9\x17\xe2\x73\x1a\x34\x79"
    # 8: 2^192 G
    b"\xa6\xd3\x96\x77\xa7\x84\x92\x76\x27\x36\xff\x83\x44\x31\x5f\xc5"
    b"\x96\x43\x95\x91\xa3\xc6\xb9\x4a\x6c\xf2\x0f\xfb\x31\x37\x28\xbe"
    b"\x67\x4f\x84\x74\x9b\x0b\x88\x16\x66\xb8\xba\xbd\x2d\x27\xec\xdf"
    b"\x82\x4a\x92\x0c\x22\x84\x05\x9b\xf2\xba\xb8\x33\xc3\x57\xf5\xf4"
    # 9: G + 2^192 G
    b"\x4e\x76\x9e\x76\x72\xc9\xdd\xad\x31\x85\x5f\x7d\xb8\xc7\xfe\xdb"
    b"\x74\xe0\x2f\x08\x02\x03\xa5\x6b\x2d\xf4\x8c\x04\x67\x7c\x8a\x3e"
    b"\x42\xb9\x90\x82\xde\x83\x06\x63\x1e\xc0\x05\x72\x06\x94\x72\x81"
    b"\xfb\x9a\xe1\x6f\x3b\x91\x22\xa5\xa4\xc3\x61\x65\xb8\x24\xbb\xb0"
    # 10: 2^64 G + 2^192 G
    b"\x78\x87\x8e\xf6\x1c\x6c\xe0\x4d\x7f\xdc\x1c\xa0\x08\xa1\xc4\x78"
    b"\xd1\xf8\x9e\x79\x9c\x0c\xe1\x31\x6e\xf9\x51\x50\xdd\xa8\x68\xb9"
    b"\xb6\xcb\x3f\x5d\x7b\x72\xc3\x21\xde\x53\x14\x2c\x12\x30\x9d\xef"
    b"\x6a\xce\x57\x0e\xbd\xe0\x8d\x4f\x9c\x62\xb9\x12\x1f\xe0\xd9\x76"
    # 11: G + 2^64 G + 2^192 G
    b"\x0c\x88\xbc\x4d\x71\x6b\x12\x87\x59\x5c\x52\x20\x81\x2f\xfc\xae"
    b"\x5b\x82\xdd\x5b\xd5\x4f\xb4\x96\x7f\x99\x1e\xd2\xc3\x1a\x35\x73"
    b"\xdd\x5d\xde\xa3\xf3\x90\x1d\xc6\x18\xd1\xb5\xb3\x9c\x04\xe6\xaa"
    b"\x7c\x81\x81\xf4\xdf\x25\x64\xf3\x3a\x57\xbf\x63\x5f\x48\xac\xa8"
    # 12: 2^128 G + 2^192 G
    b"\x68\xf3\x44\xaf\x6b\x31\x74\x66\xef\xe0\xa4\x23\x08\x3e\x49\xf3"
    b"\x43\xa0\xa2\x8c\x42\xba\x79\x2f\xe9\x6a\x79\xfb\x3e\x72\xad\x0c"
    b"\x31\xb9\xc4\x05\xf8\x54\x0a\x20\x60\x4e\xd9\x3c\x24\xd6\x7f\xf3"
    b"\x66\x8b\xfc\x22\x71\xf5\xc6\x26\xcd\xfe\x17\xdb\x3f\xb2\x4d\x4a"
    # 13: G + 2^128 G + 2^192 G
    b"\x40\x52\xbf\x4b\x6f\x46\x1d\xb9\x66\x3c\x62\xc3\xed\xba\xd7\xa0"
    b"\x0d\x1a\x10\x14\x4e\xc3\x9c\x28\xd3\x6b\x47\x89\xa2\x58\x2e\x7f"
    b"\xfe\xcf\x4d\x51\x90\xb0\xfc\x61\x86\x2b\xe6\xbd\x71\xd7\x0c\xc8"
    b"\xe7\x24\xf3\x39\x99\xbf\xcc\x5b\x23\x5a\x27\xc3\x18\x8d\x25\xeb"
    # 14: 2^64 G + 2^128 G + 2^192 G
    b"\x1e\xdd\xba\xe2\xc8\x02\xe4\x1a\x12\x32\x02\xa8\xf6\x2b\xff\x7a"
    b"\xaf\xdf\x5c\xc0\x85\x26\xa7\xa4\x74\x34\x6c\x10\xa1\xd4\xcf\xac"
    b"\x43\x10\x4d\x86\x56\x0e\xbc\xfc\x0c\x45\xf4\x52\x73\xdb\x33\xa0"
    b"\x36\xe0\x6b\x7e\x4c\x70\x19\x17\x8f\xa0\xaf\x2d\xd6\x03\xf8\x44"
    # 15: G + 2^64 G + 2^128 G + 2^192 G
    b"\xb4\x8e\x26\xb4\x84\xf7\xa2\x1c\x0a\x4a\x46\xfb\x6a\xaf\x36\x3a"
    b"\x66\xb0\xde\x32\x25\xc4\x74\x4b\x96\x15\xb5\x11\x0d\x1d\x78\xe5"
    b"\xfa\xc0\x15\x40\x4d\x4d\x3d\xab\x64\x13\x1b\xcd\xfe\xd6\xf6\x68"
    b"\xc0\x04\xe4\x04\x8b\x7b\x0f\x98\x06\xeb\xb0\xf6\x21\xa0\x1b\x2d"
)


def sign(private_key, message):
    """DER ECDSA signature (SEQUENCE { INTEGER r, INTEGER s }) of SHA-256(message) with the P-256
    scalar `private_key` (an int, as rmnode.p256_key reads it), with RFC 6979's nonce."""
    d = private_key
    n = _N
    if not 0 < d < n:
        raise ValueError("P-256 private key out of range")  # the key itself stays out of the message
    h1 = hashlib.sha256(message).digest()
    z = int.from_bytes(h1, "big")  # qlen = hlen = 256: the whole hash is the number signed
    for k in _nonces(d.to_bytes(32, "big"), (z % n).to_bytes(32, "big")):
        # RFC 6979 3.2 h.3 and 3.4: skip a k outside [1, n-1] or one that gives r or s = 0
        if not 0 < k < n:
            continue
        x, _, z_of_x = _mul_base(k)
        z_inverse = _inverse(z_of_x, _P)
        r = x * (z_inverse * z_inverse % _P) % _P % n  # R's affine x, reduced mod n
        if not r:
            continue
        s = _inverse(k, n) * (z + r * d) % n
        if s:
            return der_signature(r, s)


def public_key(private_key):
    """The uncompressed SEC1 point 04 || x || y (65 bytes) of the P-256 scalar `private_key`: to check
    a key against its certificate."""
    if not 0 < private_key < _N:
        raise ValueError("P-256 private key out of range")
    p = _P
    x, y, z = _mul_base(private_key)
    z = _inverse(z, p)
    zz = z * z % p
    return b"\x04" + (x * zz % p).to_bytes(32, "big") + (y * (zz * z % p) % p).to_bytes(32, "big")


def der_signature(r, s):
    """SEQUENCE { INTEGER r, INTEGER s } in DER for 0 <= r, s < 2^256: each INTEGER in the fewest
    bytes, with a 0 byte in front when its top bit is set (a DER INTEGER is signed)."""
    body = _der_integer(r) + _der_integer(s)
    return b"\x30" + bytes((len(body),)) + body  # at most 70 bytes: the short length form


def _der_integer(value):
    octets = value.to_bytes(33, "big")  # one byte more than n needs: room for the sign byte
    start = 0
    while start < 32 and octets[start] == 0 and octets[start + 1] < 0x80:
        start += 1
    return b"\x02" + bytes((33 - start,)) + octets[start:]


def _hmac_sha256(key, data):
    """HMAC-SHA256 (RFC 2104) with a 32-byte key, the only size RFC 6979 uses here."""
    key = int.from_bytes(key, "big")
    inner = hashlib.sha256((key ^ _IPAD_INT).to_bytes(32, "big"))
    inner.update(_IPAD_TAIL)
    inner.update(data)
    outer = hashlib.sha256((key ^ _OPAD_INT).to_bytes(32, "big"))
    outer.update(_OPAD_TAIL)
    outer.update(inner.digest())
    return outer.digest()


def _nonces(x, h1):
    """RFC 6979 section 3.2's candidates for k, in order, for the key `x` and the reduced hash `h1`
    (32 bytes each): a generator, so sign() asks for the next one only if a candidate is unusable."""
    hmac = _hmac_sha256
    v = b"\x01" * 32  # step b
    k = bytes(32)  # step c
    k = hmac(k, v + b"\x00" + x + h1)  # step d
    v = hmac(k, v)  # step e
    k = hmac(k, v + b"\x01" + x + h1)  # step f
    v = hmac(k, v)  # step g
    while True:
        v = hmac(k, v)  # step h.2: qlen = hlen, so one HMAC output is a whole candidate
        yield int.from_bytes(v, "big")
        k = hmac(k, v + b"\x00")  # step h.3: the candidate was refused
        v = hmac(k, v)


def _mul_base(k):
    """kG in Jacobian coordinates (x, y, z), for 0 < k < n: the fixed-base comb over _COMB.

    Column c (63 down to 0) takes bit c of each of k's four 64-bit quarters as the table index; the
    sum so far is doubled before each column. Kept flat, no deeper than _double and _add_affine:
    sign() may run in a BLE IRQ handler with about 4 KiB of C stack."""
    digits = k.to_bytes(32, "big")
    table = _COMB
    x, y, z = 0, 1, 0  # z = 0: the point at infinity
    for column_byte in range(7, -1, -1):
        # bits 8 column_byte to 8 column_byte + 7 of each quarter, lowest quarter first (big-endian)
        quarter0 = digits[31 - column_byte]
        quarter1 = digits[23 - column_byte]
        quarter2 = digits[15 - column_byte]
        quarter3 = digits[7 - column_byte]
        for bit in range(7, -1, -1):
            if z:
                x, y, z = _double(x, y, z)
            index = ((quarter0 >> bit & 1) | (quarter1 >> bit & 1) << 1
                     | (quarter2 >> bit & 1) << 2 | (quarter3 >> bit & 1) << 3)
            if index:
                at = (index - 1) << 6
                x, y, z = _add_affine(x, y, z, int.from_bytes(table[at:at + 32], "big"),
                                      int.from_bytes(table[at + 32:at + 64], "big"))
    return x, y, z


def _double(x, y, z):
    """2(x, y, z) in Jacobian coordinates for a = -3 (the "dbl-2001-b" formulas, z3 = 2yz: 4M + 4S).
    Sums and differences stay unreduced; each product is reduced once."""
    p = _P
    delta = z * z % p
    gamma = y * y % p
    beta = x * gamma % p
    alpha = 3 * (x - delta) * (x + delta) % p
    x3 = (alpha * alpha - (beta << 3)) % p
    z3 = (y * z << 1) % p  # 2yz: one product instead of (y + z)^2 - gamma - delta
    return x3, (alpha * ((beta << 2) - x3) - (gamma * gamma << 3)) % p, z3


def _add_affine(x1, y1, z1, x2, y2):
    """(x1, y1, z1) + (x2, y2, 1) in Jacobian coordinates (the "madd-2007-bl" formulas, z3 = z1 h:
    8M + 3S)."""
    if not z1:
        return x2, y2, 1
    p = _P
    zz = z1 * z1 % p
    h = x2 * zz % p - x1  # both reduced: h = 0 exactly when the x coordinates are equal
    r = y2 * (z1 * zz % p) % p - y1
    if not h:
        # Equal x needs the sum so far sG = +-mG, m the table point's scalar: s = +-m (mod n). Not for
        # 0 < k < n. Before column 0, s and m are non-zero with disjoint bits and s + m < n. In
        # column 0, s + m = k < n: s = m would make k = 2m, whose column-0 bits are 0, not m's, and
        # s = -m would make k = 0.
        raise ArithmeticError("P-256 comb added a point to itself or its negative")
    hh = h * h % p
    hhh = h * hh % p
    v = x1 * hh % p
    x3 = (r * r - hhh - (v << 1)) % p
    return x3, (r * (v - x3) - y1 * hhh) % p, z1 * h % p


def _inverse(a, m):
    """a^-1 mod m for 0 < a < m, m prime: the extended Euclidean algorithm (on MicroPython about
    5x faster than pow(a, m - 2, m), and a 3-argument pow with exponent -1 returns 0 there)."""
    r0, r1 = m, a
    t0, t1 = 0, 1
    while r1:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        t0, t1 = t1, t0 - q * t1
    return t0 % m
