"""Flash footprint of the deployed firmware: bytes of each .mpy (the rmnode package, BLE included), of
boot.py and main.py (deployed as source), the total, and the filesystem blocks they take; beside the
.py sources the same modules would be without mpy-cross (`rmkit deploy --source`).

The build is deploy.py's own (rmkit.deploy.build), into a temporary directory, so it is what
`make deploy` puts on a board.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rmkit import FIRMWARE_DIR
from rmkit.deploy import FLASH_BLOCK, build, built_files


def measure(source: Path = FIRMWARE_DIR) -> dict:
    """{"modules": {path: {"mpy": bytes, "py": bytes}}, "mpy_total", "py_total", "deployed_total",
    "deployed_blocks"}; boot.py and main.py count in deployed_total only (they stay source)."""
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp:
        files = built_files(build(Path(tmp) / "firmware", source=source))
        modules, deployed, blocks = {}, 0, 0
        for rel, path in sorted(files.items()):
            size = path.stat().st_size
            deployed += size
            blocks += -(-size // FLASH_BLOCK)
            if rel.endswith(".mpy"):
                modules[rel] = {"mpy": size, "py": (source / rel).with_suffix(".py").stat().st_size}
    return {"modules": modules, "mpy_total": sum(m["mpy"] for m in modules.values()),
            "py_total": sum(m["py"] for m in modules.values()), "deployed_total": deployed,
            "deployed_blocks": blocks, "block_bytes": FLASH_BLOCK}
