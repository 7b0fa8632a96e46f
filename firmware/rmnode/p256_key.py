"""The P-256 private scalar of the node's DER private key: PKCS#8 (what rmkit pki writes) or SEC1.

SEC1 is RFC 5915's ECPrivateKey, what `openssl ec -outform der` writes; PKCS#8 (RFC 5958) wraps it
with the algorithm id-ecPublicKey and the curve. Anything else (RSA, Ed25519, another curve, explicit
curve parameters, PEM text) is refused with a KeyFormatError that names what it found and where,
never the key's bytes. Imported only to sign (rmnode.p256), like rmnode.cert for the certificate; importing
it keeps a few KB of GC heap (docs/measurements.md), so read the key once.
"""

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

_SEQUENCE = const(0x30)
_INTEGER = const(0x02)
_OCTET_STRING = const(0x04)
_OID = const(0x06)
_EC_PARAMETERS = const(0xA0)  # ECPrivateKey's [0] parameters
# P-256's group order: a scalar must lie in [1, n-1]
_N = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551)
_EC_PUBLIC_KEY = b"\x2a\x86\x48\xce\x3d\x02\x01"  # 1.2.840.10045.2.1 id-ecPublicKey
_PRIME256V1 = b"\x2a\x86\x48\xce\x3d\x03\x01\x07"  # 1.2.840.10045.3.1.7 prime256v1 = P-256


class KeyFormatError(ValueError):
    """The key is not a P-256 private key in PKCS#8 or SEC1 DER; the message says what it is."""


def private_key_from_der(der):
    """The private scalar d (an int, 0 < d < n) of a P-256 key in PKCS#8 or SEC1 DER."""
    if bytes(der[:5]) == b"-----":
        raise KeyFormatError("the key is PEM text, not DER")
    tag, start, end = _item(der, 0, len(der))
    if tag != _SEQUENCE:
        raise KeyFormatError("the key is not a DER SEQUENCE (first tag 0x%02x)" % tag)
    if end != len(der):
        raise KeyFormatError("%d bytes follow the key's DER" % (len(der) - end))
    tag, _, version_end = _item(der, start, end)
    if tag != _INTEGER:
        raise KeyFormatError("the key does not start with a version INTEGER (tag 0x%02x)" % tag)
    tag, algorithm_start, algorithm_end = _item(der, version_end, end)
    if tag == _OCTET_STRING:  # SEC1: version 1, then the private key
        return _ec_private_key(der, 0, len(der), "SEC1")
    if tag != _SEQUENCE:
        raise KeyFormatError("neither PKCS#8 nor SEC1: the field after the version has tag 0x%02x" % tag)
    # PKCS#8: version 0 (or 1: RFC 5958), AlgorithmIdentifier, OCTET STRING { ECPrivateKey }
    version = _integer(der, start, end)
    if version > 1:
        raise KeyFormatError("PKCS#8 version %d, expected 0 or 1" % version)
    tag, oid_start, oid_end = _item(der, algorithm_start, algorithm_end)
    if tag != _OID:
        raise KeyFormatError("PKCS#8 algorithm is not an OID (tag 0x%02x)" % tag)
    algorithm = bytes(der[oid_start:oid_end])
    if algorithm != _EC_PUBLIC_KEY:
        raise KeyFormatError("PKCS#8 key algorithm is %s, not EC (1.2.840.10045.2.1)" % _oid_name(algorithm))
    _check_curve(der, oid_end, algorithm_end, "PKCS#8")
    tag, key_start, key_end = _item(der, algorithm_end, end)
    if tag != _OCTET_STRING:
        raise KeyFormatError("PKCS#8 private key is not an OCTET STRING (tag 0x%02x)" % tag)
    return _ec_private_key(der, key_start, key_end, "PKCS#8 ECPrivateKey")


def _ec_private_key(der, pos, end, what):
    """d from the ECPrivateKey at pos: SEQUENCE { 1, OCTET STRING d, [0] curve OPTIONAL, [1] ... }."""
    tag, start, end = _item(der, pos, end)
    if tag != _SEQUENCE:
        raise KeyFormatError("%s is not a SEQUENCE (tag 0x%02x)" % (what, tag))
    if _integer(der, start, end) != 1:
        raise KeyFormatError("%s version is not 1" % what)
    _, _, version_end = _item(der, start, end)
    tag, key_start, key_end = _item(der, version_end, end)
    if tag != _OCTET_STRING:
        raise KeyFormatError("%s private key is not an OCTET STRING (tag 0x%02x)" % (what, tag))
    if key_end < end:
        tag, parameters_start, parameters_end = _item(der, key_end, end)
        if tag == _EC_PARAMETERS:  # the curve: PKCS#8 usually leaves it out, SEC1 names it
            _check_curve(der, parameters_start, parameters_end, what)
    if not 0 < key_end - key_start <= 32:
        raise KeyFormatError("%s private key has %d bytes, P-256's has 32" % (what, key_end - key_start))
    d = int.from_bytes(bytes(der[key_start:key_end]), "big")
    if not 0 < d < _N:
        raise KeyFormatError("%s private key is out of range for P-256" % what)
    return d


def _check_curve(der, pos, end, what):
    """The EC parameters at pos must be the named curve prime256v1."""
    if pos >= end:
        raise KeyFormatError("%s EC key names no curve" % what)
    tag, start, end = _item(der, pos, end)
    if tag != _OID:
        # a SEQUENCE here spells the curve out (explicit parameters), which RFC 5480 forbids
        raise KeyFormatError("%s EC key gives its curve as tag 0x%02x, not a named curve OID" % (what, tag))
    curve = bytes(der[start:end])
    if curve != _PRIME256V1:
        raise KeyFormatError("%s EC key is on curve %s, not P-256 (1.2.840.10045.3.1.7)" % (what, _oid_name(curve)))


def _integer(der, pos, end):
    """The small non-negative INTEGER at pos (a version number)."""
    tag, start, end = _item(der, pos, end)
    if tag != _INTEGER or not 0 < end - start <= 2:
        raise KeyFormatError("expected a small INTEGER at byte %d" % pos)
    return int.from_bytes(bytes(der[start:end]), "big")


def _item(der, pos, end):
    """(tag, content_start, content_end) of the DER item at pos, which must end by `end`."""
    if pos + 2 > end:
        raise KeyFormatError("the key's DER is truncated at byte %d" % pos)
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 2 or pos + count > end:
            raise KeyFormatError("bad DER length at byte %d" % (pos - 1))
        length = int.from_bytes(bytes(der[pos:pos + count]), "big")
        pos += count
    if pos + length > end:
        raise KeyFormatError("DER item at byte %d overruns its container" % pos)
    return tag, pos, pos + length


def _oid_name(oid):
    """An OID's dotted form, with its name when it is a key type one might find instead of P-256."""
    arcs = []
    value = 0
    for byte in oid:
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        return "an empty OID"
    first = min(arcs[0] // 40, 2)
    dotted = ".".join(str(arc) for arc in [first, arcs[0] - 40 * first] + arcs[1:])
    # one string, not a dict: a thousand bytes less heap for a table only an error reads
    names = ("1.2.840.113549.1.1.1 rsaEncryption 1.2.840.10040.4.1 DSA 1.3.101.110 X25519 1.3.101.112 Ed25519 "
             "1.3.101.113 Ed448 1.2.840.10045.3.1.1 P-192 1.3.132.0.33 P-224 1.3.132.0.34 P-384 1.3.132.0.35 P-521 "
             "1.3.132.0.10 secp256k1 1.3.36.3.3.2.8.1.1.7 brainpoolP256r1").split()
    for i in range(0, len(names), 2):
        if names[i] == dotted:
            return "%s (%s)" % (dotted, names[i + 1])
    return dotted


class KeyUnusable(Exception):
    """The node's key cannot sign (missing, unreadable, not P-256); the message says why, never the key."""


def load_key(key_path):
    """The P-256 scalar from the node's DER key file (PKCS#8 or SEC1), or KeyUnusable."""
    if not key_path:
        raise KeyUnusable("no key in the factory data")
    try:
        with open(key_path, "rb") as f:
            der = f.read()
        return private_key_from_der(der)
    except OSError as e:
        raise KeyUnusable("key %s not readable (%s)" % (key_path, e))
    except KeyFormatError as e:
        raise KeyUnusable("key %s: %s" % (key_path, e))
