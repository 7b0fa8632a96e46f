"""What a test needs from this machine (a command, user namespaces): where it is missing the test is skipped on a
developer's machine, but fails under CI (the `CI` environment variable set, as .ci/run sets it): a test that
silently skips there would hide that a part of the suite no longer runs."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def need(available: bool, what: str) -> None:
    """Skip (fail under CI) unless `available`; `what` says what is missing and how to get it."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"this test needs {what}, and CI must run it: install or enable it on the CI machine",
                    pytrace=False)
    pytest.skip(f"needs {what}")


def need_command(name: str, package: str) -> None:
    need(shutil.which(name) is not None, f"the `{name}` command (Debian package {package})")


def need_user_namespaces() -> None:
    """unshare -rn: a private user and network namespace (the tests' addresses other than 127.0.0.1 live there)."""
    need_command("unshare", "util-linux")
    works = subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
    need(works, "unprivileged user and network namespaces (`unshare -rn`; sysctl kernel.unprivileged_userns_clone=1, "
                "user.max_user_namespaces > 0)")
