"""The client side of Security 1 built from the firmware's own primitives (rmnode.x25519, rmnode.aes_ctr), for
runs on the MicroPython unix port or CPython: the Security 1 benchmark, the stack workload, and the firmware unit
tests (the CPython host tests also use an independent client on `cryptography`)."""

import hashlib

from rmnode import pb


class Sec1Client:
    def __init__(self, pop):
        from rmnode import x25519
        self._x25519 = x25519
        self._pop_hash = hashlib.sha256(pop).digest() if pop else None
        self._private = x25519.generate_private_key()
        self.public = x25519.public_key(self._private)
        self.ctr = None
        self.device_public = None

    def cmd0(self):
        # like the CLI: sec1.msg (0) left out (docs/protocol.md 3.1)
        return pb.encode(pb.SessionData, {"sec_ver": 1, "sec1": {"sc0": {"client_pubkey": self.public}}})

    def cmd1(self, resp0):
        from rmnode.aes_ctr import AESCTR
        sr0 = pb.decode(pb.SessionData, resp0)["sec1"]["sr0"]
        self.device_public = sr0["device_pubkey"]
        key = self._x25519.shared_secret(self._private, self.device_public)
        if self._pop_hash:
            key = bytes(a ^ b for a, b in zip(key, self._pop_hash))
        self.ctr = AESCTR(key, sr0["device_random"])
        verify = self.ctr.crypt(self.device_public)
        return pb.encode(pb.SessionData, {"sec_ver": 1, "sec1": {"msg": 2, "sc1": {"client_verify_data": verify}}})

    def check_resp1(self, resp1):
        sr1 = pb.decode(pb.SessionData, resp1)["sec1"]["sr1"]
        verify = self.ctr.crypt(sr1["device_verify_data"])
        if verify != self.public:
            raise AssertionError("device verify data: expected %r, got %r" % (self.public, verify))

    def crypt(self, data):
        return self.ctr.crypt(data)
