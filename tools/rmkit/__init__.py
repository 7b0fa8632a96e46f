"""Host side of the user-node mapping toolkit: one package, thin CLIs over it."""

from pathlib import Path

#: the repository root (tools/rmkit/__init__.py -> ../..)
REPO_ROOT = Path(__file__).resolve().parents[2]
#: what goes onto the board's flash
FIRMWARE_DIR = REPO_ROOT / "firmware"
