"""The test suite in tiers, as pytest markers, so that a firmware developer's edit-test loop runs the fast ones
(`make test-fast`: the unit tier, under a minute; TIERS="unit or component" for more) and `make test` runs
them all:

- unit: code in this process or one short interpreter run, nothing started that listens (firmware logic under
  CPython and the unix port, codecs, the PKI, the report and picture writers);
- component: one real part started beside the code under test (mosquitto, the cloud's HTTP workers, a
  MicroPython process serving provisioning, the reference node);
- board: virtual boards (the MicroPython unix port made an ESP32), their simulated radios and ROM;
- e2e: whole stacks (host_tests/e2e), Espressif's tools, namespaces;
- hil: a board on a desk (host_tests/hil, deselected without --board; host_tests/e2e/test_hil_virtual.py runs
  them against a virtual board).

A test gets its tier from its folder (e2e, hil), else from a marker its module sets (`pytestmark = pytest.mark.board`
where a module builds boards itself), else from the fixtures it uses.

The slowest tiers run first (`slowest_first`): with pytest-xdist handing out a test or two at a time
(`--maxschedchunk 2` in the Makefile), the long end-to-end tests start early and the short ones fill the
gaps, so the run does not end waiting on one worker's minute-long test."""

from __future__ import annotations

import pytest

TIERS = {
    "unit": "in this process or one short interpreter run; nothing started that listens",
    "component": "one real part started beside the code under test (broker, cloud workers, a MicroPython process)",
    "board": "virtual boards",
    "e2e": "whole stacks: boards, broker, cloud, clients (host_tests/e2e)",
}
# fixtures that start virtual boards, and fixtures that start one real part
BOARD_FIXTURES = frozenset({"vboard", "vboard_factory", "vboard_esp32", "rig", "rig_factory"})
COMPONENT_FIXTURES = frozenset({"broker", "broker_factory", "subscriber", "cloud_broker", "cloud_process",
                                "cloud_process_factory", "node_runner", "start_mqtt_node", "start_process",
                                "http_echo_server", "reference_node_factory", "firmware_node_factory",
                                "cloud_service", "pki_cloud_service"})


def register(config) -> None:
    for name, text in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {text} (make test-fast runs unit and component)")


def tier_of(item) -> str:
    folder = item.path.parent.name
    if folder in ("e2e", "hil"):
        return "e2e" if folder == "e2e" else "hil"
    for name in TIERS:
        if item.get_closest_marker(name):
            return name
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & BOARD_FIXTURES:
        return "board"
    if fixtures & COMPONENT_FIXTURES:
        return "component"
    return "unit"


def mark(items) -> None:
    for item in items:
        tier = tier_of(item)
        if tier in TIERS and not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))
        tiers = [name for name in TIERS if item.get_closest_marker(name)]
        if len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(tiers)}: one tier per test "
                                    "(support/tiers.py)")


RUN_ORDER = ("e2e", "hil", "board", "component", "unit")  # slowest first (median time per test, in that order)


def slowest_first(items) -> None:
    """Order `items` by tier, slowest first; within a tier as collected (a module's tests stay together)."""
    items.sort(key=lambda item: RUN_ORDER.index(tier_of(item)))
