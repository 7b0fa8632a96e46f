"""CPython stand-in for MicroPython's `cryptolib` (ECB only), so firmware crypto runs in host tests.

On sys.path only where firmware code runs under CPython (support.paths.use_firmware(), and
launch_prov_node.py under CPython); the firmware itself always uses the board's cryptolib.
"""

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_MODE_ECB = 1


class aes:  # noqa: N801 - MicroPython's name
    def __init__(self, key: bytes, mode: int, iv: bytes | None = None) -> None:
        if mode != _MODE_ECB:
            raise ValueError(f"this shim implements ECB (mode 1) only, got mode {mode}")
        self._encryptor = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()
        self._decryptor = Cipher(algorithms.AES(bytes(key)), modes.ECB()).decryptor()

    def encrypt(self, data: bytes) -> bytes:
        if len(data) % 16:
            raise ValueError("ECB input must be a multiple of 16 bytes")
        return self._encryptor.update(bytes(data))

    def decrypt(self, data: bytes) -> bytes:
        if len(data) % 16:
            raise ValueError("ECB input must be a multiple of 16 bytes")
        return self._decryptor.update(bytes(data))
