"""Row 7 and the RAM rows of make bench (rmkit.benchmarks.mapping_flows): the whole mapping flow by either
mapping, timed phase by phase from the client's login, the phases adding up to the time to confirmed and
what follows confirmed timed on; and one real flow of each mapping on a virtual board at host speed, with
the RAM model's figures of both of its boots."""

import pytest

from rmkit.benchmarks import mapping_flows
from rmkit.benchmarks.mapping_flows import AFTER_CONFIRMED, MAPPING_PHASES, chain
from rmkit.timeline import Event


class FakeTimeline:
    def __init__(self, events):
        self.events = [Event(t, "client", "client", text) for t, text in events]

    def first(self, prefix):
        return next((e for e in self.events if e.text.startswith(prefix)), None)


CH_RESP_EVENTS = [(0.10, "login flows@example.com"), (0.15, "proto-ver -> v1.1 [SoftAP]"),
                  (3.90, "prov-session: Security 1 session [SoftAP]"), (3.91, "POST user/nodes/mapping/initiate"),
                  (3.92, "request_id 1234abcd..., challenge"), (5.05, "signature (71 bytes), node_id 240AC4"),
                  (5.06, "success: node mapped"), (5.80, "prov-config status: Connected (127.0.0.1) [SoftAP]"),
                  (8.40, "MQTT connected (mutual TLS, 2014 ms)")]


def test_challenge_response_confirms_at_verify_and_the_wifi_and_the_node_online_follow():
    confirmed, phases = chain(FakeTimeline(CH_RESP_EVENTS), "ch_resp")
    assert confirmed == pytest.approx(4.96)
    names = [name for name, _ in MAPPING_PHASES["ch_resp"] + AFTER_CONFIRMED["ch_resp"]]
    assert list(phases) == names
    assert sum(phases[name] for name, _ in MAPPING_PHASES["ch_resp"]) == pytest.approx(confirmed)
    assert phases["ch_resp: the node signs"] == pytest.approx(1.13)
    assert phases["reboot, node online"] == pytest.approx(2.60)


def test_a_run_without_its_confirmation_claims_no_time_to_confirmed():
    confirmed, phases = chain(FakeTimeline(CH_RESP_EVENTS[:5]), "ch_resp")
    assert confirmed is None and list(phases) == ["session (connect, proto-ver, Security 1)",
                                                  "challenge from the cloud"]


def test_one_flow_by_each_mapping_on_a_host_speed_board():
    lines = []
    runs = mapping_flows.measure({"host": 1}, lines.append, flows=(("softap", "ch_resp"), ("softap", "secret")))

    assert [(r["mapping"], r["status"]) for r in runs] == [("ch_resp", "confirmed"), ("secret", "confirmed")]
    for run in runs:
        steps = MAPPING_PHASES[run["mapping"]]
        assert sum(run["phases"][name] for name, _ in steps) == pytest.approx(run["confirmed_s"], abs=0.002)
        provisioning, online = run["boots"]  # the node rebooted into station mode once
        assert provisioning["gc_at_boot"] == 56000 and provisioning["gc_peak"] >= 56000
        assert provisioning["tls_largest_min"] is None
        assert 16717 < online["tls_largest_min"] < online["largest_at_boot"]  # a session's input buffer fitted
    assert lines[0].startswith("  flow, ch_resp over softap, host speed, run 1/1: confirmed in ")


def test_a_run_whose_board_crashed_is_done_again_on_a_new_board_and_says_so(monkeypatch):
    attempts = []

    def flow(stack, name, email, transport, mapping, speed):
        attempts.append(name)
        if len(attempts) == 1:
            return mapping_flows.FlowRun(transport, mapping, speed, "failed: TransportError: prov-config", None,
                                         crashes=["killed by SIGSEGV"])
        return mapping_flows.FlowRun(transport, mapping, speed, "confirmed", 9.5)

    monkeypatch.setattr(mapping_flows, "_flow", flow)
    run = mapping_flows._flow_or_again(None, "vb-1", "a@example.com", "ble", "secret", "esp32")
    assert attempts == ["vb-1", "vb-1-again"]
    assert (run.status, run.confirmed_s) == ("confirmed", 9.5)
    assert run.replaced == ["failed: TransportError: prov-config; crashes: killed by SIGSEGV"]


def test_a_run_that_failed_without_a_crash_is_not_done_again(monkeypatch):
    attempts = []

    def flow(stack, name, email, transport, mapping, speed):
        attempts.append(name)
        return mapping_flows.FlowRun(transport, mapping, speed, "failed: ProvisionError: wrong PoP", None)

    monkeypatch.setattr(mapping_flows, "_flow", flow)
    run = mapping_flows._flow_or_again(None, "vb-1", "a@example.com", "softap", "ch_resp", "host")
    assert attempts == ["vb-1"] and run.status.startswith("failed") and run.replaced == []
