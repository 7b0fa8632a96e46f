"""The node's P-256 signing (rmnode.p256) and key reader (rmnode.p256_key) against `cryptography` (OpenSSL):
its signatures verify and equal OpenSSL's deterministic (RFC 6979) ones byte for byte, its public keys
and comb table are OpenSSL's points, and it reads the keys cryptography and the openssl tool write."""

from __future__ import annotations

import hashlib
import hmac
import random
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from rmkit.pki import Pki
from rmnode import p256
from rmnode.p256_key import KeyFormatError, private_key_from_der
from support.needs import need_command
from support.paths import FW_UNIT

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
RFC_KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721  # RFC 6979 A.2.5
DETERMINISTIC = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
# messages of 0, 1, 64 and 1000 bytes, and of random sizes
SIZES = [0, 1, 64, 1000, None]


def _key(d: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(d, ec.SECP256R1())


def _der(key, private_format=serialization.PrivateFormat.PKCS8) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, private_format, serialization.NoEncryption())


def _random_cases(seed: int, count: int) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        size = SIZES[i % len(SIZES)]
        cases.append((rng.randrange(1, N), rng.randbytes(rng.randrange(300) if size is None else size)))
    return cases


def test_240_signatures_of_random_messages_under_random_keys_verify():
    for d, message in _random_cases(seed=256, count=240):
        signature = p256.sign(d, message)
        # raises InvalidSignature if it does not verify
        _key(d).public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))


def test_signatures_equal_openssl_deterministic_ones_byte_for_byte():
    cases = _random_cases(seed=6979, count=120) + [(RFC_KEY, b"sample"), (RFC_KEY, b"test"), (1, b""), (N - 1, b"x")]
    for d, message in cases:
        assert p256.sign(d, message) == _key(d).sign(message, DETERMINISTIC), (hex(d), message.hex())


def _rfc6979_candidates(d: int, message: bytes, count: int) -> list[int]:
    """RFC 6979 3.2's first `count` candidates for k on P-256 with SHA-256, on the standard library's hmac."""
    def mac(key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha256).digest()

    x = d.to_bytes(32, "big")
    h1 = (int.from_bytes(hashlib.sha256(message).digest(), "big") % N).to_bytes(32, "big")
    v, k = b"\x01" * 32, b"\x00" * 32
    k = mac(k, v + b"\x00" + x + h1)
    v = mac(k, v)
    k = mac(k, v + b"\x01" + x + h1)
    v = mac(k, v)
    candidates = []
    for _ in range(count):
        v = mac(k, v)
        candidates.append(int.from_bytes(v, "big"))
        k = mac(k, v + b"\x00")
        v = mac(k, v)
    return candidates


def test_the_nonce_candidates_are_rfc6979s():
    expected = _rfc6979_candidates(RFC_KEY, b"sample", 4)
    assert expected[0] == 0xA6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60  # A.2.5's k
    z = int.from_bytes(hashlib.sha256(b"sample").digest(), "big")
    candidates = p256._nonces(RFC_KEY.to_bytes(32, "big"), (z % N).to_bytes(32, "big"))
    assert [next(candidates) for _ in range(4)] == expected


def test_sign_skips_a_nonce_outside_1_to_n_minus_1(monkeypatch):
    d, message, k = RFC_KEY, b"sample", 0x1234567890ABCDEF << 128
    monkeypatch.setattr(p256, "_nonces", lambda x, h1: iter([0, N, N + 1, k]))
    z = int.from_bytes(hashlib.sha256(message).digest(), "big")
    r = _key(k).public_key().public_numbers().x % N
    s = pow(k, -1, N) * (z + r * d) % N
    assert decode_dss_signature(p256.sign(d, message)) == (r, s)


def test_public_keys_are_openssl_points():
    rng = random.Random(7748)
    scalars = [1, 2, 3, 15, 16, N - 1, N - 2, N - 15, 1 << 64, 1 << 128, 1 << 192, 1 << 255, (1 << 64) - 1,
               (1 << 256) - (1 << 224) - 1, sum(1 << (64 * t) for t in range(4)),
               sum(((1 << 64) - 1) << (64 * t) for t in range(0, 4, 2))]
    scalars += [rng.randrange(1, N) for _ in range(60)]
    for d in scalars:
        expected = _key(d).public_key().public_bytes(serialization.Encoding.X962,
                                                      serialization.PublicFormat.UncompressedPoint)
        assert p256.public_key(d) == expected, hex(d)


def test_the_comb_table_holds_the_sums_of_g_times_2_to_the_64t():
    table = p256._COMB
    assert len(table) == 15 * 64
    for index in range(1, 16):
        scalar = sum(1 << (64 * t) for t in range(4) if index >> t & 1)
        numbers = _key(scalar).public_key().public_numbers()
        at = (index - 1) * 64
        assert table[at:at + 64] == numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big"), index


def test_sign_calls_at_most_three_levels_deep():
    # sign() may run in a BLE IRQ handler with ~4 KiB of C stack: about 10 Python calls, the caller's included
    depth, deepest = [0], [0]

    def profile(frame, event, arg):
        if event == "call":
            depth[0] += 1
            deepest[0] = max(deepest[0], depth[0])
        elif event == "return":
            depth[0] -= 1

    sys.setprofile(profile)
    try:
        p256.sign(RFC_KEY, b"sample")
    finally:
        sys.setprofile(None)
    assert deepest[0] - 1 <= 3, f"sign() calls {deepest[0] - 1} levels deep"


def test_a_node_signs_a_challenge_its_certificate_verifies(tmp_path: Path):
    # what the cloud's .../mapping/verify will do (docs/protocol.md 7.1): the node's key as rmkit pki
    # writes it onto the board, the signature checked with the node certificate's public key
    node = Pki(tmp_path / "pki").node_identity("A1B2C3D4E5F6")
    d = private_key_from_der(node.key_der.read_bytes())
    certificate_key = node.certificate().public_key()
    challenge = bytes.fromhex("6c2b0f0e5f3a4d8e9b7a1c2d3e4f5061")
    certificate_key.verify(p256.sign(d, challenge), challenge, ec.ECDSA(hashes.SHA256()))
    assert p256.public_key(d) == certificate_key.public_bytes(serialization.Encoding.X962,
                                                              serialization.PublicFormat.UncompressedPoint)


def test_keys_cryptography_writes_are_read_in_both_formats():
    rng = random.Random(5915)
    for _ in range(40):
        d = rng.randrange(1, N)
        assert private_key_from_der(_der(_key(d))) == d
        assert private_key_from_der(_der(_key(d), serialization.PrivateFormat.TraditionalOpenSSL)) == d


def test_keys_the_openssl_command_writes_are_read(tmp_path: Path):
    need_command("openssl", "openssl")
    sec1 = subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-outform", "DER"],
                          capture_output=True, check=True).stdout
    (tmp_path / "key.der").write_bytes(sec1)
    pkcs8 = subprocess.run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-inform", "DER", "-outform", "DER",
                            "-in", str(tmp_path / "key.der")], capture_output=True, check=True).stdout
    again = subprocess.run(["openssl", "ec", "-inform", "DER", "-outform", "DER", "-in", str(tmp_path / "key.der")],
                           capture_output=True, check=True).stdout
    d = serialization.load_der_private_key(sec1, None).private_numbers().private_value
    assert private_key_from_der(sec1) == private_key_from_der(pkcs8) == private_key_from_der(again) == d


@pytest.mark.parametrize("kind, named", [
    ("rsa", "1.2.840.113549.1.1.1 (rsaEncryption)"),
    ("dsa", "1.2.840.10040.4.1 (DSA)"),
    ("ed25519", "1.3.101.112 (Ed25519)"),
    ("x25519", "1.3.101.110 (X25519)"),
    ("ed448", "1.3.101.113 (Ed448)"),
    ("p384", "1.3.132.0.34 (P-384)"),
    ("p521", "1.3.132.0.35 (P-521)"),
    ("secp256k1", "1.3.132.0.10 (secp256k1)"),
    ("brainpoolP256r1", "1.3.36.3.3.2.8.1.1.7 (brainpoolP256r1)"),
])
def test_other_keys_are_refused_by_name(kind: str, named: str):
    curves = {"p384": ec.SECP384R1(), "p521": ec.SECP521R1(), "secp256k1": ec.SECP256K1(),
              "brainpoolP256r1": ec.BrainpoolP256R1()}
    makers = {"rsa": lambda: rsa.generate_private_key(65537, 2048), "dsa": lambda: dsa.generate_private_key(2048),
              "ed25519": ed25519.Ed25519PrivateKey.generate, "x25519": x25519.X25519PrivateKey.generate,
              "ed448": ed448.Ed448PrivateKey.generate}
    key = ec.generate_private_key(curves[kind]) if kind in curves else makers[kind]()
    formats = [serialization.PrivateFormat.PKCS8]
    if kind in curves:
        formats.append(serialization.PrivateFormat.TraditionalOpenSSL)
    for private_format in formats:
        der = _der(key, private_format)
        with pytest.raises(KeyFormatError) as refused:
            private_key_from_der(der)
        message = str(refused.value)
        assert named in message
        for start in range(0, len(der) - 8, 4):  # no 8 bytes of the key in the message, in hex
            assert der[start:start + 8].hex() not in message.lower()


def test_the_unit_tests_key_fixtures_are_what_cryptography_writes():
    pkcs8, sec1 = serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL
    expected = {
        "p256_pkcs8": _der(_key(RFC_KEY)),
        "p256_sec1": _der(_key(RFC_KEY), sec1),
        "p384_pkcs8": _der(ec.derive_private_key(RFC_KEY, ec.SECP384R1()), pkcs8),
        "p384_sec1": _der(ec.derive_private_key(RFC_KEY, ec.SECP384R1()), sec1),
        "secp256k1_pkcs8": _der(ec.derive_private_key(RFC_KEY, ec.SECP256K1()), pkcs8),
        "ed25519_pkcs8": _der(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))), pkcs8),
    }
    fixtures = {}
    for line in (FW_UNIT / "p256_keys.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, der = line.split()
            fixtures[name] = bytes.fromhex(der)
    assert fixtures == expected
