"""Does a node's challenge signature verify with its public key? RainMaker's cloud's checks (docs/protocol.md 7.1).

The node signs SHA-256 of the challenge's bytes with the private key of its MQTT client certificate
(esp-rainmaker, `esp_rmaker_node_auth.c`): an EC P-256 key gives an ASN.1 DER ECDSA signature, an
RSA key an RSASSA-PSS signature with SHA-256, MGF1-SHA-256 and a 32-byte salt (mbedtls's rule,
"the largest salt up to the hash length"). RainMaker's backend takes PSS only, never PKCS#1 v1.5.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

# a P-256 DER signature is at most 72 bytes; an RSA-4096 one 512
MAX_SIGNATURE_BYTES = 512
MIN_RSA_BITS = 2048
PSS_SALT_BYTES = 32  # the SHA-256 length: what mbedtls picks for any key of 528 bits or more


class UnsupportedNodeKey(ValueError):
    """The node's certificate holds a key of a kind the challenge-response check does not take."""


NodePublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def check_node_key(public_key) -> NodePublicKey:
    """`public_key` if a node may sign challenges with it (EC P-256, RSA of 2048 bits or more), else
    UnsupportedNodeKey saying what it is."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise UnsupportedNodeKey(f"an EC key on {public_key.curve.name}; only P-256 (secp256r1) is taken")
        return public_key
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise UnsupportedNodeKey(f"a {public_key.key_size}-bit RSA key; at least {MIN_RSA_BITS} bits are needed")
        return public_key
    raise UnsupportedNodeKey(f"a {type(public_key).__name__.lstrip('_')}; only EC P-256 and RSA are taken")


def signature_verifies(public_key: NodePublicKey, message: bytes, signature: bytes) -> bool:
    """True when `signature` is the node's signature of SHA-256(`message`).

    ECDSA: DER-encoded, a high S accepted as well (mbedtls does not normalize S, and a verifier that
    insisted on low S would refuse half of a real node's answers). RSA: PSS as the module says."""
    key = check_node_key(public_key)
    if not signature or len(signature) > MAX_SIGNATURE_BYTES:
        return False
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(signature, message,
                       padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_BYTES), hashes.SHA256())
    except InvalidSignature:
        return False
    return True
