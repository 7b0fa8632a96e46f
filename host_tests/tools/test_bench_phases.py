"""The end-to-end row's breakdown (rmkit.benchmarks.flow_timing): the client's steps from its Timeline,
the node's reboot as the host saw it, the station-mode boot's own uptime stamps; the phases chain, so
they add up to the end-to-end time, for our client's texts and for esp-rainmaker-cli's."""

import pytest

from rmkit.benchmarks.espcli_flow import CLI_MARKS
from rmkit.benchmarks.flow_timing import PHASES, REBOOT_MARK, RMKIT_CLIENT_MARKS, chain
from rmkit.timeline import Event

SERIAL_LOG = """rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)
I (3) node: state: provisioning (service PROV_e0ec4b, security 1, softap)
I (405) node: joined rmkit-lab; credentials stored
I (1005) node: provisioned; rebooting into station mode
rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)
I (1) node: state: connecting (rmkit-lab)
I (506) mqtt: network is up
I (527) clock: time set by SNTP from 127.0.0.1:34025: 2026-12-01 03:01:35 UTC
I (590) mqtt: connected in 63 ms
I (601) mqtt: published node/240AC4E0EC4B/user/mapping (msg id 2, 126 bytes)
I (607) mapping: mapping for user KcVpx8eKIyFFlCZdraGYfQ acknowledged, pending cleared
"""


class FakeTimeline:
    def __init__(self, events):
        self.events = [Event(t, "client", "client", text) for t, text in events]

    def first(self, prefix):
        return next((e for e in self.events if e.text.startswith(prefix)), None)


@pytest.mark.parametrize("marks", [RMKIT_CLIENT_MARKS, CLI_MARKS], ids=["rmkit", "esp-rainmaker-cli"])
def test_the_phases_chain_from_the_client_marks_and_the_station_boot(marks):
    timeline = FakeTimeline([(0.040, marks["start"] + "x"), (0.061, marks["session"]), (0.064, marks["user association"]),
                             (0.469, marks["Wi-Fi apply"]), (1.010, REBOOT_MARK), (1.693, marks["confirmed"])])
    timing = chain(timeline, marks, SERIAL_LOG)
    assert timing.status == "confirmed"
    assert list(timing.phases) == list(PHASES)
    assert timing.total_s == pytest.approx(1.653)
    assert sum(timing.phases.values()) == pytest.approx(timing.total_s)
    assert timing.phases["reboot"] == pytest.approx(0.541)
    assert timing.phases["station join"] == pytest.approx(0.506)
    assert timing.phases["SNTP"] == pytest.approx(0.021)
    assert timing.phases["TLS connect"] == pytest.approx(0.063)
    assert timing.phases["publish→PUBACK"] == pytest.approx(0.006)
    assert timing.phases["cloud confirm"] == pytest.approx(1.693 - 1.010 - 0.607)


def test_a_flow_without_the_reboot_keeps_its_total_but_claims_no_phases():
    timeline = FakeTimeline([(0.0, "login a"), (1.5, "request_status: confirmed")])
    timing = chain(timeline, RMKIT_CLIENT_MARKS, "I (1) node: state: provisioning\n")
    assert (timing.status, timing.total_s, timing.phases) == ("confirmed", 1.5, {})
