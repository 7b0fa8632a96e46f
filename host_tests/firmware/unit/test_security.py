"""Security 0 and 1 handshakes and session state (docs/protocol.md 3.2, 3.3)."""

from rmnode import pb
from rmnode import security
from fwtest import raises, check, equal, Sec1Client


def test_sec0_handshake_matches_golden_bytes():
    sec = security.Security0()
    check(not sec.established, "not established before the handshake")
    raises(security.NotEstablished, sec.decrypt, b"x")
    equal(sec.handle(bytes.fromhex("5203a20100")), bytes.fromhex("52050801aa0100"), "sec0 response")
    check(sec.established, "established")
    equal(sec.decrypt(b"abc"), b"abc", "plaintext")


def test_sec0_rejects_other_versions():
    sec = security.Security0()
    e = raises(security.HandshakeError, sec.handle, bytes.fromhex("1001") + bytes.fromhex("5203a20100"))
    check("version mismatch" in str(e), "version mismatch reported: %s" % e)


def test_sec1_handshake_and_shared_stream():
    sec = security.Security1(b"abcd1234")
    client = Sec1Client(b"abcd1234")
    resp0 = sec.handle(client.cmd0())
    r0 = pb.decode(pb.SessionData, resp0)
    equal(r0["sec_ver"], 1, "sec_ver echoed")
    equal(r0["sec1"]["msg"], 1, "Response0")
    equal(len(r0["sec1"]["sr0"]["device_random"]), 16, "device_random")
    check(not sec.established, "not yet established")
    resp1 = sec.handle(client.cmd1(resp0))
    equal(pb.decode(pb.SessionData, resp1)["sec1"]["msg"], 3, "Response1")
    client.check_resp1(resp1)
    check(sec.established, "established")
    # one keystream for both directions, in exchange order
    for size in (5, 0, 40, 17):
        plain = bytes(range(size))
        equal(sec.decrypt(client.crypt(plain)), plain, "request %d" % size)
        equal(client.crypt(sec.encrypt(plain)), plain, "response %d" % size)


def test_sec1_without_pop():
    sec = security.Security1(b"")
    client = Sec1Client(b"")
    client.check_resp1(sec.handle(client.cmd1(sec.handle(client.cmd0()))))
    check(sec.established, "established without PoP")


def test_sec1_wrong_pop_fails_handshake():
    sec = security.Security1(b"right-pop")
    client = Sec1Client(b"wrong-pop")
    cmd1 = client.cmd1(sec.handle(client.cmd0()))
    e = raises(security.HandshakeError, sec.handle, cmd1)
    check("proof of possession" in str(e), "wrong PoP reported: %s" % e)
    check(not sec.established, "not established")
    raises(security.NotEstablished, sec.decrypt, b"x")


def test_sec1_cmd0_restarts_any_state():
    sec = security.Security1(b"pop")
    first = Sec1Client(b"pop")
    first.check_resp1(sec.handle(first.cmd1(sec.handle(first.cmd0()))))
    second = Sec1Client(b"pop")
    resp0 = sec.handle(second.cmd0())
    check(not sec.established, "Cmd0 restarted the session")
    second.check_resp1(sec.handle(second.cmd1(resp0)))
    equal(sec.decrypt(second.crypt(b"hello")), b"hello", "new stream")


def test_sec1_protocol_errors():
    sec = security.Security1(b"pop")
    client = Sec1Client(b"pop")
    e = raises(security.HandshakeError, sec.handle, bytes.fromhex("5203a20100"))  # a sec0 request
    check("version mismatch" in str(e), "version mismatch reported: %s" % e)
    raises(security.HandshakeError, sec.handle, b"\x10\x01")  # no sec1 payload
    raises(security.HandshakeError, sec.handle, b"\xff\xff")  # not protobuf
    short = pb.encode(pb.SessionData, {"sec_ver": 1, "sec1": {"sc0": {"client_pubkey": bytes(31)}}})
    raises(security.HandshakeError, sec.handle, short)
    raises(security.HandshakeError, sec.handle, pb.encode(pb.SessionData, {"sec_ver": 1, "sec1": {"msg": 2}}))
    raises(security.HandshakeError, sec.handle, pb.encode(pb.SessionData, {"sec_ver": 1, "sec1": {"msg": 7}}))
    # low-order client key
    zero = pb.encode(pb.SessionData, {"sec_ver": 1, "sec1": {"sc0": {"client_pubkey": bytes(32)}}})
    raises(security.HandshakeError, sec.handle, zero)
    # a good handshake still works after all that
    client.check_resp1(sec.handle(client.cmd1(sec.handle(client.cmd0()))))


def test_new_session_factory():
    check(isinstance(security.new_session(0, "x"), security.Security0), "sec0")
    check(isinstance(security.new_session(1, "x"), security.Security1), "sec1")
