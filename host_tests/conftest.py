"""Shared pytest fixtures. Feature fixtures live in host_tests/fixtures_*.py and are loaded here."""

import os
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "artifacts"


@pytest.fixture
def artifacts_dir(request) -> Path:
    """Per-test folder for logs (board serial log, broker log, cloud log, timeline): artifacts/<test id>/."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.replace("host_tests/", ""))
    path = ARTIFACTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path

# Fixture modules per area (host_tests/fixtures_*.py), shared by every test file.
pytest_plugins = [
    "fixtures_vboard",
    "fixtures_mqtt",
    "fixtures_cloud",
    "fixtures_prov",
    "fixtures_stack",
]
