"""Host side of the user-node mapping toolkit: one package, thin CLIs over it."""

import shlex
import sys
from pathlib import Path

#: the repository root (tools/rmkit/__init__.py -> ../..)
REPO_ROOT = Path(__file__).resolve().parents[2]
#: what goes onto the board's flash
FIRMWARE_DIR = REPO_ROOT / "firmware"
#: the venv's programs (rmkit, mpremote, ampy, esptool): next to the interpreter running rmkit
VENV_BIN = Path(sys.executable).parent


def venv_tool(name: str) -> str:
    """A venv program by its full path, quoted for a shell: command lines the tools print must work
    when pasted into a shell where the venv is not activated."""
    return shlex.quote(str(VENV_BIN / name))
