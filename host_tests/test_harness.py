"""The harness itself: what the root conftest.py promises every test."""

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
