"""X25519 against RFC 7748 vectors; AES-256-CTR against NIST SP 800-38A F.5.5, split and wrapped."""

from rmnode import x25519
from rmnode.aes_ctr import AESCTR
from fwtest import raises, check, equal

h = bytes.fromhex


def test_rfc7748_section_5_2_vectors():
    equal(x25519.scalarmult(h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
                            h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")),
          h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"), "vector 1")
    equal(x25519.scalarmult(h("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d"),
                            h("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493")),
          h("95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"), "vector 2")


def test_rfc7748_iteration_1():
    k = u = h("09" + "00" * 31)
    k, u = x25519.scalarmult(k, u), k
    equal(k, h("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"), "iteration 1")


def test_rfc7748_section_6_1_diffie_hellman():
    alice = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    alice_pub = x25519.public_key(alice)
    bob_pub = x25519.public_key(bob)
    equal(alice_pub, h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"), "alice public")
    equal(bob_pub, h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"), "bob public")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    equal(x25519.shared_secret(alice, bob_pub), shared, "alice shared")
    equal(x25519.shared_secret(bob, alice_pub), shared, "bob shared")


def test_x25519_rejects_bad_keys():
    raises(x25519.X25519Error, x25519.scalarmult, bytes(31), bytes(32))
    # u = 0 and u = 1 are low-order points: the shared secret would be all zeros
    raises(x25519.X25519Error, x25519.shared_secret, bytes(range(32)), bytes(32))
    raises(x25519.X25519Error, x25519.shared_secret, bytes(range(32)), b"\x01" + bytes(31))


_KEY = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
_IV = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
_PLAIN = h("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
           "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
_CIPHER = h("601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
            "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6")


def test_aes256_ctr_nist_vector():
    equal(AESCTR(_KEY, _IV).crypt(_PLAIN), _CIPHER, "F.5.5")
    equal(AESCTR(_KEY, _IV).crypt(_CIPHER), _PLAIN, "F.5.6")


def test_aes_ctr_stream_continues_across_calls():
    for sizes in ((1, 63), (15, 1, 16, 32), (32, 0, 32), (7, 9, 13, 35)):
        ctr = AESCTR(_KEY, _IV)
        out = b""
        pos = 0
        for size in sizes:
            out += ctr.crypt(_PLAIN[pos:pos + size])
            pos += size
        equal(out, _CIPHER, "split %r" % (sizes,))


def test_aes_ctr_counter_wraps_at_128_bits():
    # block ff..ff, then 00..00: the second block must equal a fresh stream started at zero
    top = AESCTR(_KEY, b"\xff" * 16).crypt(bytes(32))
    zero = AESCTR(_KEY, bytes(16)).crypt(bytes(16))
    equal(top[16:], zero, "after wrap")


def test_aes_ctr_rejects_bad_sizes():
    raises(ValueError, AESCTR, bytes(16), _IV)
    raises(ValueError, AESCTR, _KEY, bytes(8))
