"""P-256 ECDSA signing against RFC 6979 A.2.5 (P-256, SHA-256), its DER encoding, the node's key in
PKCS#8 and SEC1 DER (p256_keys.txt, next to this file), and its C stack need. Signatures verified
by `cryptography`, and equal to its deterministic ones: host_tests/firmware/test_fw_p256.py."""

import sys

from rmnode import p256
from rmnode.p256_key import KeyFormatError, private_key_from_der
from fwtest import HERE, Rng, check, equal, raises, with_c_stack_left

h = bytes.fromhex

# RFC 6979 A.2.5: the P-256 key pair, and the signatures with SHA-256
RFC_KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
RFC_UX = "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6"
RFC_UY = "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299"
RFC_SAMPLE_R = "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716"
RFC_SAMPLE_S = "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8"
RFC_TEST_R = "F1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367"
RFC_TEST_S = "019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083"

# P-256's group order and base point (SEC 2)
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

BLE_IRQ_STACK = 4096  # C stack a BLE IRQ handler gets on an ESP32 (docs/protocol.md 1.2)


def _keys():
    keys = {}
    with open(HERE + "/p256_keys.txt") as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, der = line.split()
                keys[name] = h(der)
    return keys


KEYS = _keys()


def _der_fields(signature):
    """[r, s] from a DER ECDSA signature, checking that it is DER: one SEQUENCE of two minimal INTEGERs."""
    equal(signature[0], 0x30, "SEQUENCE tag")
    equal(signature[1], len(signature) - 2, "SEQUENCE length")
    fields, pos = [], 2
    while pos < len(signature):
        equal(signature[pos], 0x02, "INTEGER tag")
        length = signature[pos + 1]
        content = signature[pos + 2:pos + 2 + length]
        equal(len(content), length, "INTEGER length")
        check(content[0] < 0x80, "INTEGER %s is negative" % content.hex())
        check(length == 1 or content[0] or content[1] >= 0x80, "INTEGER %s is not minimal" % content.hex())
        fields.append(int.from_bytes(content, "big"))
        pos += 2 + length
    equal(len(fields), 2, "fields")
    return fields


def test_rfc6979_public_key():
    equal(p256.public_key(RFC_KEY), h("04" + RFC_UX + RFC_UY), "U = xG")


def test_rfc6979_sha256_sample():
    # r and s both have their top bit set: each INTEGER is 33 bytes, a 0 byte first
    equal(p256.sign(RFC_KEY, b"sample"), h("3046" + "022100" + RFC_SAMPLE_R + "022100" + RFC_SAMPLE_S), "sample")


def test_rfc6979_sha256_test():
    # s starts with 0x01: 32 bytes, no 0 byte
    equal(p256.sign(RFC_KEY, b"test"), h("3045" + "022100" + RFC_TEST_R + "0220" + RFC_TEST_S), "test")


def test_signing_is_deterministic_and_each_message_gets_its_own_nonce():
    equal(p256.sign(RFC_KEY, b"challenge"), p256.sign(RFC_KEY, b"challenge"), "same message")
    rs = [_der_fields(p256.sign(RFC_KEY, message))[0] for message in (b"challenge", b"challengf", b"", b"\x00")]
    equal(len(set(rs)), len(rs), "r (the nonce's point) of different messages")


def test_signatures_of_messages_of_0_1_64_and_1000_bytes_are_der():
    rng = Rng(6979)
    for size in (0, 1, 64, 1000):
        for _ in range(3):
            key = 1 + int.from_bytes(rng.bytes(32), "big") % (N - 1)
            r, s = _der_fields(p256.sign(key, rng.bytes(size)))
            check(0 < r < N and 0 < s < N, "r, s in [1, n-1] for a %d-byte message" % size)


def test_bytearray_and_memoryview_messages_sign_as_bytes():
    expected = p256.sign(RFC_KEY, b"sample")
    equal(p256.sign(RFC_KEY, bytearray(b"sample")), expected, "bytearray")
    equal(p256.sign(RFC_KEY, memoryview(b"xsample")[1:]), expected, "memoryview")


def test_der_signature_integers_are_minimal_and_unsigned():
    equal(p256.der_signature(1, 2), h("3006" "020101" "020102"), "one byte each")
    equal(p256.der_signature(0x7F, 0x80), h("3007" "02017f" "02020080"), "0x80 needs a 0 byte")
    equal(p256.der_signature(0x0100, 0xFF), h("3008" "02020100" "020200ff"), "two bytes")
    # leading zero bytes of a 256-bit value are dropped, down to the first byte below 0x80
    equal(p256.der_signature(0x7F << 240, 0x80 << 240),
          h("3043" "021f7f" + "00" * 30 + "022000" + "80" + "00" * 30), "short INTEGERs")
    top = p256.der_signature(N - 1, 1 << 255)
    equal(len(top), 72, "largest signature")
    equal(top[:5], h("3046022100"), "r's 0 byte")
    equal(_der_fields(top), [N - 1, 1 << 255], "round trip")


def test_public_key_of_1_and_n_minus_1_is_plus_and_minus_g():
    equal(p256.public_key(1), b"\x04" + GX.to_bytes(32, "big") + GY.to_bytes(32, "big"), "1G")
    equal(p256.public_key(N - 1), b"\x04" + GX.to_bytes(32, "big") + (P - GY).to_bytes(32, "big"), "-G")


def test_sign_refuses_a_scalar_outside_1_to_n_minus_1():
    for key in (0, N, N + 1, -RFC_KEY):
        error = raises(ValueError, p256.sign, key, b"sample")
        check("%x" % abs(key) not in str(error).lower() or key == 0, "the key is in the error: %s" % error)
    raises(ValueError, p256.public_key, 0)


def test_pkcs8_and_sec1_keys_give_the_same_scalar():
    equal(private_key_from_der(KEYS["p256_pkcs8"]), RFC_KEY, "PKCS#8")
    equal(private_key_from_der(KEYS["p256_sec1"]), RFC_KEY, "SEC1 (openssl ec -outform der)")
    equal(private_key_from_der(bytearray(KEYS["p256_sec1"])), RFC_KEY, "SEC1 in a bytearray")
    # RFC 5915 makes the curve and the public key optional: SEQUENCE { 1, OCTET STRING d }
    equal(private_key_from_der(h("30250201010420%064x" % RFC_KEY)), RFC_KEY, "SEC1 without its options")


def test_key_from_der_signs_as_rfc6979_says():
    key = private_key_from_der(KEYS["p256_pkcs8"])
    equal(p256.sign(key, b"sample")[-32:], h(RFC_SAMPLE_S), "s")


def test_other_curves_and_algorithms_are_refused_by_name():
    for name, found in (("p384_pkcs8", "1.3.132.0.34 (P-384)"), ("p384_sec1", "1.3.132.0.34 (P-384)"),
                        ("secp256k1_pkcs8", "1.3.132.0.10 (secp256k1)"), ("ed25519_pkcs8", "1.3.101.112 (Ed25519)")):
        message = str(raises(KeyFormatError, private_key_from_der, KEYS[name]))
        check(found in message, "%s: %r does not name %s" % (name, message, found))
        check("c9afa9" not in message.lower() and "0001020304" not in message, "%s: key bytes in %r" % (name, message))
    check(issubclass(KeyFormatError, ValueError), "KeyFormatError is a ValueError")


def test_malformed_keys_are_refused():
    pkcs8 = KEYS["p256_pkcs8"]
    bare = "30250201010420%064x"
    cases = {
        "PEM text": b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----\n",
        "empty": b"",
        "trailing byte": pkcs8 + b"\x00",
        "not a SEQUENCE": b"\x04\x20" + bytes(32),
        "scalar 0": h(bare % 0),
        "scalar n": h(bare % N),
        "SEC1 version 2": h("30250201020420%064x" % RFC_KEY),
        "PKCS#8 version 2": b"\x30\x81\x87\x02\x01\x02" + pkcs8[6:],
        "33-byte scalar": h("3026020101042100%064x" % RFC_KEY),
        # explicit curve parameters (a SEQUENCE where the curve's OID belongs)
        "explicit curve": h("302f0201010420%064x" % RFC_KEY + "a0083006020101020101"),
        "algorithm without a curve": h("3037020100300906072a8648ce3d0201042730250201010420%064x" % RFC_KEY),
    }
    for what, der in cases.items():
        message = str(raises(KeyFormatError, private_key_from_der, der))
        check("c9afa9" not in message.lower(), "%s: key bytes in %r" % (what, message))


def test_every_truncation_and_byte_flip_is_a_key_format_error_or_a_scalar():
    # never an IndexError or the like: the reader checks each length against its container
    for name in ("p256_pkcs8", "p256_sec1"):
        der = KEYS[name]
        for cut in range(len(der)):
            raises(KeyFormatError, private_key_from_der, der[:cut])
    rng = Rng(5915)
    for _ in range(300):
        der = bytearray(KEYS["p256_pkcs8" if rng.below(2) else "p256_sec1"])
        der[rng.below(len(der))] ^= 1 << rng.below(8)
        try:
            d = private_key_from_der(der)
        except KeyFormatError:
            continue
        check(0 < d < N, "scalar out of range")


def test_sign_fits_the_c_stack_of_a_ble_irq_handler():
    # an ESP32's BLE host task leaves an IRQ handler about 4 KiB of C stack (docs/protocol.md 1.2);
    # the unix port's 64-bit frames are bigger, so fitting here fits there
    if sys.implementation.name != "micropython":
        return
    expected = h("3046" + "022100" + RFC_SAMPLE_R + "022100" + RFC_SAMPLE_S)
    equal(with_c_stack_left(BLE_IRQ_STACK, lambda: p256.sign(RFC_KEY, b"sample")), expected, "4 KiB of stack")
    key_der = KEYS["p256_pkcs8"]
    equal(with_c_stack_left(BLE_IRQ_STACK, lambda: private_key_from_der(key_der)), RFC_KEY, "key, 4 KiB of stack")
