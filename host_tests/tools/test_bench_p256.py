"""The P-256 signing benchmark (rmkit.benchmarks.p256_timing) runs on the deployed .mpy and reports
figures in the ranges the module's docstring gives: `make bench` times sign() itself (row 6, at host and
ESP32 speed), not the heap, garbage and C stack this reports."""

from rmkit.benchmarks import p256_timing


def test_one_run_reports_time_heap_garbage_and_stack():
    lines = []
    result = p256_timing.measure(1, lines.append)
    assert len(result["sign_ms"]) == 1 and 0 < result["sign_ms"][0] < 100
    assert 960 < result["table_bytes"] < 1100  # the 960-byte table and a bytes object's header
    assert result["table_bytes"] < result["import_bytes"] < 8000
    assert 0 < result["key_import_bytes"] < 8000
    assert result["garbage_bytes"] > 0
    # sign() fits the ~4 KiB a BLE IRQ handler has, and the bisection saw it fail with less (the two bounds can
    # cross by a frame: how much C stack a call takes depends on where a collection lands)
    assert result["stack_passes_at"] <= 4096 and 0 < result["stack_fails_at"] < 4096
    assert lines and lines[0].startswith("  p256, run 1/1: sign() median")
