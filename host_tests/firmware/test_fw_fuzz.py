"""The node never raises anything but a specific ProtocommError out of dispatch, whatever arrives:
random bodies, mutated valid messages and random well-formed messages, on every endpoint."""

from __future__ import annotations

import random

import pytest

from rmnode import log, pb, protocomm
from rmnode.prov_endpoints import Provisioning
import fwtest
from test_fw_interop import _random_message

ENDPOINT_SCHEMAS = {
    "prov-config": pb.WiFiConfigPayload,
    "prov-scan": pb.WiFiScanPayload,
    "prov-ctrl": pb.WiFiCtrlPayload,
    "cloud_user_assoc": pb.RMakerConfigPayload,
}
ROUNDS = 3000


@pytest.fixture(autouse=True)
def quiet_log(monkeypatch):
    monkeypatch.setattr(log, "level", log.ERROR)  # thousands of expected warnings otherwise


def _bodies(rng: random.Random, schema: str, rounds: int):
    valid = [pb.encode(schema, _random_message(rng, schema)) for _ in range(50)]
    for i in range(rounds):
        choice = i % 3
        if choice == 0:
            yield rng.randbytes(rng.randrange(0, 80))
        elif choice == 1:
            body = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                if body and rng.random() < 0.7:
                    body[rng.randrange(len(body))] = rng.randrange(256)
                else:
                    body = body[:rng.randrange(len(body) + 1)]
            yield bytes(body)
        else:
            yield pb.encode(schema, _random_message(rng, schema))


def _check_error(e: protocomm.ProtocommError) -> None:
    assert not isinstance(e, protocomm.InternalError), f"handler bug: {e}"
    assert type(e) is not protocomm.ProtocommError and str(e)


@pytest.mark.parametrize("endpoint", sorted(ENDPOINT_SCHEMAS))
def test_secured_endpoint_fuzz_over_sec0(endpoint, tmp_path, monkeypatch):
    # Security 0 keeps re-handshakes cheap, so every body reaches the handler.
    monkeypatch.setenv("FW_TMP", str(tmp_path))
    rng = random.Random(endpoint)
    mappings = []
    station = fwtest.FakeStation([{"ssid": b"ap", "bssid": b"\x01" * 6, "channel": 1, "rssi": -50, "auth": 3}] * 5)
    prov = Provisioning(fwtest.FakeConfig(0, "", "node-1"), station, lambda u, k: mappings.append((u, k)))
    session = 1
    prov.dispatch(session, "prov-session", bytes.fromhex("5203a20100"))
    answered = failed = 0
    for body in _bodies(rng, ENDPOINT_SCHEMAS[endpoint], ROUNDS):
        try:
            reply = prov.dispatch(session, endpoint, body)
            assert isinstance(reply, bytes)
            if reply:
                pb.decode(ENDPOINT_SCHEMAS[endpoint], reply)  # our replies always parse
            answered += 1
        except protocomm.ProtocommError as e:
            _check_error(e)
            failed += 1
            session += 1
            prov.dispatch(session, "prov-session", bytes.fromhex("5203a20100"))
        if rng.random() < 0.05:  # let the station move, so status/reset paths vary
            station.current = station.StationStatus(rng.choice([0, 1, 2, 3]), rng.choice([0, 1]), "198.51.100.9",
                                                    b"ap", b"\x01" * 6, 1, 3)
    assert answered > 100 and failed > 100, (answered, failed)
    assert all(u and k for u, k in mappings), "only complete mappings reach the callback"


def test_session_endpoint_and_secured_bodies_fuzz_over_sec1(tmp_path, monkeypatch):
    monkeypatch.setenv("FW_TMP", str(tmp_path))
    rng = random.Random(1)
    prov = Provisioning(fwtest.FakeConfig(1, "pop", "node-1"), fwtest.FakeStation(), lambda u, k: None)
    session_bodies = [bytes.fromhex("5203a20100"), fwtest.Sec1Client(b"pop").cmd0(),
                      pb.encode(pb.SessionData, {"sec_ver": 1, "sec1": {"msg": 2, "sc1": {"client_verify_data": bytes(32)}}})]
    for i in range(ROUNDS):
        if i % 2:
            body = rng.randbytes(rng.randrange(0, 60))
        else:
            body = bytearray(rng.choice(session_bodies))
            body[rng.randrange(len(body))] = rng.randrange(256)
            body = bytes(body[:rng.randrange(len(body) + 1)])
        try:
            prov.dispatch(i, "prov-session", body)
        except protocomm.ProtocommError as e:
            _check_error(e)
    # random bodies after a real handshake: the first may reach a handler, all must fail cleanly
    for endpoint in list(ENDPOINT_SCHEMAS) + ["proto-ver", "nope", ""]:
        for _ in range(20):
            fwtest.sec1_session(prov.dispatch, 5000, b"pop")
            for _ in range(5):
                try:
                    prov.dispatch(5000, endpoint, rng.randbytes(rng.randrange(0, 40)))
                except protocomm.ProtocommError as e:
                    _check_error(e)
