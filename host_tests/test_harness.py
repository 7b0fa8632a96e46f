"""The harness itself: what the root conftest.py promises every test."""

import pytest

from support import paths

INNER_TESTS = """
def test_fails_with_logs(artifacts_dir):
    (artifacts_dir / "node.log").write_text("what the node said")
    assert False, "on purpose"

def test_fails_without_artifacts():
    assert False, "on purpose"

def test_passes_with_logs(artifacts_dir):
    pass
"""


def test_a_failed_test_names_its_artifacts_folder(pytester, monkeypatch, tmp_path):
    # the real root conftest.py, in a pytest run of its own whose artifacts go to a temp dir
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path / "artifacts")
    pytester.makeconftest((paths.HOST_TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    assert (tmp_path / "artifacts" / "test_inner.py_test_fails_with_logs" / "node.log").exists()
    result.stdout.fnmatch_lines(["*_ test_fails_with_logs _*",
                                 "*- artifacts -*",
                                 f"artifacts: {tmp_path}/artifacts/test_inner.py_test_fails_with_logs/"])
    output = result.stdout.str()
    # only failures that have an artifacts folder get the line
    assert output.count("artifacts: ") == 1, output


BOARD_TESTS = """
import pytest
from rmkit.vboard import BoardFault

SLEEPING_HANDLER = "import vb_irq, time; vb_irq.enter(); time.sleep_ms(20); vb_irq.leave()"

def test_a_board_faults(vboard):
    # what a BLE IRQ handler that sleeps does, without a central: the board reports it and carries on
    with pytest.raises(BoardFault):
        vboard.exec(SLEEPING_HANDLER)
    assert vboard.exec("print(6 * 7)").strip() == "42"

@pytest.mark.board_faults_expected
def test_a_board_faults_on_purpose(vboard):
    with pytest.raises(BoardFault):
        vboard.exec(SLEEPING_HANDLER)

def test_no_fault(vboard):
    assert vboard.exec("print(6 * 7)").strip() == "42"
"""


@pytest.mark.board_faults_expected  # the inner run's boards are this test's too
def test_a_test_whose_virtual_board_reported_a_fault_fails(pytester, monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path / "artifacts")
    pytester.makeconftest((paths.HOST_TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_boards=BOARD_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    # the test itself passed; the fixtures failed it at teardown, naming the fault
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_a_board_faults *",
                                 "*board vb1: vboard FAULT: BLE IRQ handler released the GIL in time.sleep_ms(20)*"])
    assert "test_a_board_faults_on_purpose" not in "".join(line for line in result.outlines if "ERROR" in line)


def _collected(*args: str) -> set:
    import subprocess
    import sys

    from support import paths

    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                         cwd=paths.HOST_TESTS, capture_output=True, text=True).stdout
    return {line.split("::")[0] for line in out.splitlines() if "::" in line}


@pytest.mark.component  # five pytest collections
def test_make_test_fast_takes_the_unit_tier_without_boards_or_stacks():
    """support/tiers.py: the unit tier (make test-fast) holds the firmware's logic and no board or stack; every
    collected test gets exactly one tier (tiers.mark checks that at each collection)."""
    files = ("firmware/test_fw_unit.py", "tools/test_pki.py", "tools/test_vboard.py", "cloud/test_cloud_mqtt.py",
             "e2e/test_scenarios.py")
    assert _collected("-m", "unit", *files) == {"firmware/test_fw_unit.py", "tools/test_pki.py"}
    assert _collected("-m", "component", *files) == {"cloud/test_cloud_mqtt.py"}
    assert _collected("-m", "board", *files) == {"tools/test_vboard.py"}
    assert _collected("-m", "e2e", *files) == {"e2e/test_scenarios.py"}
