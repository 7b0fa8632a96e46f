"""`make bench`'s report, written from small made-up measurements (the benchmarks themselves take
minutes and are not run here): results.md is one table in which every row of the six measurements
stands beside its reference, results.json holds every figure, scale.png is a PNG, and the goals are
judged from the figures. `rmkit bench --help` says what it measures and where the report goes."""

import json
import subprocess
import sys
from pathlib import Path

from rmkit import bench_report
from rmkit.benchmarks.flow_timing import PHASES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def flow(total: float, per_phase: float) -> dict:
    return {"status": "confirmed", "total_s": total, "phases": {p: per_phase for p in PHASES},
            "internal_ram": [23000, 8400]}


def made_up_results(**overrides) -> dict:
    results = {
        "phases": list(PHASES),
        "machine": {"cpu": "Test CPU", "cores": 2, "ram_gib": 8.0, "os": "Linux-test", "python": "3.11.7",
                    "micropython": "MicroPython 1.29", "mpy_cross": "mpy-cross 1.29", "commit": "abc1234",
                    "dirty": False, "date": "2026-12-01 00:00 UTC", "loadavg_start": "0.50 0.40 0.30",
                    "loadavg_end": "1.00 0.80 0.60", "wall_s": 600.0},
        "e2e": {"rmkit": [flow(0.8 + i / 100, 0.08) for i in range(20)], "espcli": [flow(10.0, 1.0) for _ in range(5)]},
        "memory": {"floors": {"whole flow, SoftAP": {"works_kib": 96, "fails_kib": 95, "tries": 7, "seconds": 15.0},
                              "provisioning, BLE": {"works_kib": 90, "fails_kib": 89, "tries": 7, "seconds": 30.0},
                              "online phase": {"works_kib": 76, "fails_kib": 75, "tries": 0, "seconds": 17.0}},
                   "ratio": 1.4, "ratio_basis": "a 32-bit build", "internal_ram": [[23000, 8400], [23100, 8300]],
                   "tls_peak_bytes": 15360},
        "footprint": {"modules": {"rmnode/ble.mpy": {"mpy": 3500, "py": 13000}, "rmnode/node.mpy": {"mpy": 2000, "py": 6000}},
                      "mpy_total": 5500, "py_total": 19000, "deployed_total": 6500, "deployed_blocks": 4, "block_bytes": 4096},
        "scale": {"runs": {100: 2, 1000: 1}, "rows": [
            {"nodes": 100, "run": 1, "p50_s": 0.3, "p99_s": 0.5, "mappings_per_s": 180.0, "raw_qos1_per_s": 5000.0,
             "raw_qos1_p99_s": 0.02, "confirmed": 100},
            {"nodes": 100, "run": 2, "p50_s": 0.35, "p99_s": 0.6, "mappings_per_s": 170.0, "raw_qos1_per_s": 4800.0,
             "raw_qos1_p99_s": 0.03, "confirmed": 100},
            {"nodes": 1000, "run": 1, "p50_s": 0.9, "p99_s": 1.6, "mappings_per_s": 400.0, "raw_qos1_per_s": 9000.0,
             "raw_qos1_p99_s": 0.1, "confirmed": 1000}]},
        "deploy": {"seconds": {"rmkit_whole": [0.5, 0.45, 0.48], "rmkit_one": [0.2, 0.21, 0.22],
                               "mpremote_whole": [0.4, 0.38, 0.41], "mpremote_one": [0.2, 0.19, 0.2]},
                   "files": 25, "whole_bytes": 53000, "one_file_bytes": 3000, "changed": "rmnode/online.mpy",
                   "baud": 115200},
        "crypto": {"x25519_ms": [3.3, 3.4, 3.2], "aes_ctr_kib_ms": [0.04, 0.038, 0.039],
                   "sec1_handshake_ms": [6.5, 6.6, 6.4],
                   "slowdown": {"bm_pidigits": [14.2, 17.6], "misc_pystone": [48.4, 71.8]}, "basis": "perf_bench scores"},
    }
    results.update(overrides)
    return results


def table(md: str) -> list[list[str]]:
    """The table's body rows, split into cells (escaped pipes kept inside their cell)."""
    rows = []
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| # ") and not line.startswith("|---"):
            cells = [c.strip().replace("\\|", "|") for c in line.strip("|").replace("\\|", "\0").split("|")]
            rows.append([c.replace("\0", "|") for c in cells])
    return rows


def test_the_report_has_every_row_beside_its_reference_and_names_the_machine(tmp_path):
    rows, goals = bench_report.write(made_up_results(), tmp_path)

    md = (tmp_path / "results.md").read_text()
    body = table(md)
    assert {row[0] for row in body} == {"1", "2", "3", "4", "5", "6"}
    headline = {number: next(row for row in body if row[0] == number and not row[1].startswith("·"))
                for number in "123456"}
    for number, row in headline.items():
        assert row[3] not in ("", "—"), f"row {number} has no reference: {row}"
    assert "esp-rainmaker-cli" in headline["1"][3]
    assert "p90" in headline["1"][2]
    assert all(any(phase in row[1] for row in body) for phase in PHASES)
    assert "ESP32 estimate" in headline["2"][3] and "÷ 1.40" in headline["2"][3]
    assert "broker's raw QoS 1" in headline["4"][3] and "msg/s" in headline["4"][3]
    assert any("N = 1000" in row[1] for row in body)
    assert "mpremote cp -r" in headline["5"][3]
    assert "ESP32 estimate" in headline["6"][3]
    for fact in ("Test CPU", "2 cores", "8 GiB", "abc1234", "2026-12-01", "0.50 0.40 0.30", "MicroPython 1.29"):
        assert fact in md

    figures = json.loads((tmp_path / "results.json").read_text())
    assert figures["table"] == rows and figures["e2e"]["rmkit"][0]["phases"]["TLS connect"] == 0.08
    assert (tmp_path / "scale.png").read_bytes().startswith(PNG_SIGNATURE)


def test_goals_are_judged_from_the_figures_and_a_miss_says_why(tmp_path):
    _, goals = bench_report.write(made_up_results(), tmp_path)
    assert goals == {"e2e_1s": True, "e2e_5x_cli": True, "heap_64k": False, "mpy_64k": True, "deploy_5x": False}
    goals_section = (tmp_path / "results.md").read_text().split("## Goals")[1]
    assert "whole-flow heap floor ≤ 64 KiB on the 32-bit-equivalent board: **missed**. whole flow, SoftAP: 96 KiB ÷ 1.40 = 69 KiB" \
        in goals_section
    assert "one-file deploy ≥ 5× faster than `mpremote cp -r`: **missed**. our one-file deploy (0.21 s: read the " \
        "board's hashes, copy one file, soft reset) is less than 5 times faster than `mpremote cp -r` of the whole " \
        "tree (0.40 s)" in goals_section
    assert "end-to-end ≤ 1 s: **met**" in goals_section


def test_a_measurement_that_could_not_run_is_a_row_saying_why(tmp_path):
    results = made_up_results(scale={"unavailable": "RuntimeError: no broker"},
                              e2e={"rmkit": [flow(1.5, 0.15)], "espcli": {"unavailable": "needs `unshare`"}},
                              crypto={"unavailable": "CalledProcessError: micropython"})
    _, goals = bench_report.write(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "esp-rainmaker-cli: not measured (needs `unshare`)" in md
    assert "not measured (RuntimeError: no broker)" in md
    assert "not measured (CalledProcessError: micropython)" in md
    assert goals["e2e_1s"] is False and goals["e2e_5x_cli"] is None
    assert "Three phases take most of it" in md
    assert (tmp_path / "scale.png").read_bytes().startswith(PNG_SIGNATURE)


def test_rmkit_bench_help_says_what_it_measures_and_where_the_report_goes():
    rmkit = Path(sys.executable).with_name("rmkit")
    out = subprocess.run([str(rmkit), "bench", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for words in ("bench/results.md", "esp-rainmaker-cli", "heap", "mpremote cp -r", "X25519", "--scale N:RUNS",
                  "--quick", "reference"):
        assert words in text, words
