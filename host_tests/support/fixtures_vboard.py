"""Fixtures for virtual boards: `vboard_factory` (started boards in tmp dirs, stopped at teardown),
`vboard` (one started board), `esp32_speed` (the keyword arguments of a board that computes at an
ESP32's speed) and `vboard_esp32` (one such board). Serial logs go to the test's artifacts folder."""

import json
from pathlib import Path

import pytest

from rmkit.vboard import VirtualBoard
from rmkit.vboard.cpu_speed import cpu_speed


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
        board.stop()


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
