"""Fixtures for virtual boards: `vboard_factory` (started boards in tmp dirs, stopped at teardown),
`vboard` (one started board), `esp32_speed` (the keyword arguments of a board that computes at an
ESP32's speed) and `vboard_esp32` (one such board). Serial logs go to the test's artifacts folder.

Every test fails when a virtual board of this process reported a fault while it ran (a BLE IRQ
handler that released the GIL: silent heap corruption on an ESP32), whichever fixture or code
started the board; a test that makes faults on purpose says so with
@pytest.mark.board_faults_expected."""

import json
from pathlib import Path

import pytest

from rmkit.vboard import VirtualBoard
from rmkit.vboard.cpu_speed import cpu_speed
from rmkit.vboard.board import recording_started_boards, running_boards

FAULTS_EXPECTED = "board_faults_expected"


def pytest_configure(config):
    config.addinivalue_line("markers", f"{FAULTS_EXPECTED}: the test makes virtual boards report faults on "
                                       "purpose (checks them itself)")


@pytest.fixture(autouse=True)
def board_faults_fail_the_test(request):
    """Fails the test (at teardown, after the other fixtures stopped their boards) with every fault a board
    reported during it: boards started by the test, and boards of wider fixtures that were running."""
    earlier = {board: len(board.faults) for board in running_boards()}
    with recording_started_boards() as started:
        yield
    if request.node.get_closest_marker(FAULTS_EXPECTED):
        return
    reports = []
    for board in list(earlier) + [board for board in started if board not in earlier]:
        for message in board.faults[earlier.get(board, 0):]:
            reports.append(f"board {board.name}: vboard FAULT: {message} (serial log: {board.serial_log})")
    if reports:
        pytest.fail("a virtual board reported what an ESP32 does not survive:\n" + "\n".join(reports),
                    pytrace=False)


def write_air(path: Path, *aps: dict, scan_s: float = None) -> Path:
    """Write an air file atomically (a running board may read it at any moment)."""
    tmp = path.with_name(path.name + ".tmp")
    air = {"aps": list(aps)}
    if scan_s is not None:
        air["scan_s"] = scan_s
    tmp.write_text(json.dumps(air))
    tmp.replace(path)
    return path


@pytest.fixture
def vboard_factory(tmp_path, artifacts_dir):
    """Call with VirtualBoard keyword arguments (name defaults to vb1, vb2, ...); returns a started board."""
    boards = []

    def make(name=None, **kwargs) -> VirtualBoard:
        name = name or f"vb{len(boards) + 1}"
        kwargs.setdefault("flash_dir", tmp_path / f"{name}-flash")
        kwargs.setdefault("pty_link", tmp_path / f"{name}.pty")
        kwargs.setdefault("log_path", artifacts_dir / f"{name}.serial.log")
        board = VirtualBoard(name=name, **kwargs)
        boards.append(board)
        board.start()
        return board

    yield make
    for board in boards:
        board.stop()  # their faults fail the test: board_faults_fail_the_test


@pytest.fixture
def vboard(vboard_factory) -> VirtualBoard:
    return vboard_factory()


@pytest.fixture(scope="session")
def esp32_speed() -> dict:
    """VirtualBoard keyword arguments for an ESP32's CPU speed: `vboard_factory(**esp32_speed)`. The factor is
    measured once per test run and worker (a few seconds; cached in the run's runtime directory)."""
    cpu_speed("esp32")
    return {"cpu": "esp32"}


@pytest.fixture
def vboard_esp32(vboard_factory, esp32_speed) -> VirtualBoard:
    """One started board whose CPU-bound work takes an ESP32's time (rmkit.vboard.cpu)."""
    return vboard_factory(**esp32_speed)
