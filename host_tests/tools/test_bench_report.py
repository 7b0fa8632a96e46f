"""`make bench`'s report, written from small made-up measurements (the benchmarks themselves take
minutes and are not run here): results.md is one table in which every row of the seven measurements
stands beside its reference, each figure is the run's own (a made-up figure changed shows in its row),
results.json holds every figure, scale.png is a PNG, and the goals are judged from the figures.
`rmkit bench --help` says what it measures and where the report goes."""

import json
import subprocess
import sys
from pathlib import Path

from rmkit.benchmarks import report as bench_report
from rmkit.benchmarks.flow_timing import PHASES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def flow(total: float, per_phase: float) -> dict:
    return {"status": "confirmed", "total_s": total, "phases": {p: per_phase for p in PHASES}}


CH_RESP_PHASES = ["session", "challenge from the cloud", "ch_resp: the node signs", "verify"]
SECRET_PHASES = ["session", "user association", "Wi-Fi apply", "reboot, node online, mapping published and confirmed"]


def boot(gc_peak: int, growths: int, largest_min: int, tls_largest_min=None) -> dict:
    return {"boot": 1, "gc_at_boot": 56000, "gc_peak": gc_peak, "growths": growths, "givebacks": 0, "refused": 0,
            "largest_at_boot": 110592, "largest_min": largest_min, "tls_largest_min": tls_largest_min}


def mapping_flow(transport: str, mapping: str, speed: str, confirmed_s: float) -> dict:
    phases = CH_RESP_PHASES if mapping == "ch_resp" else SECRET_PHASES
    after = ["Wi-Fi apply", "reboot, node online"] if mapping == "ch_resp" else []
    prov_largest = 51200 if transport == "softap" else 31744
    return {"transport": transport, "mapping": mapping, "speed": speed, "status": "confirmed",
            "confirmed_s": confirmed_s, "phases": {p: confirmed_s / len(phases) for p in phases + after},
            "boots": [boot(112000, 1, prov_largest), boot(56000, 0, 69632, 69632 if speed == "host" else 65536)]}


def made_up_flows() -> dict:
    runs = []
    for speed, base in (("host", 0.5), ("esp32", 7.0)):
        for transport in ("softap", "ble"):
            for mapping in ("ch_resp", "secret"):
                runs += [mapping_flow(transport, mapping, speed, base + i / 10) for i in range(2)]
    return {"runs": runs, "phases": {"ch_resp": CH_RESP_PHASES, "secret": SECRET_PHASES},
            "after_confirmed": {"ch_resp": ["Wi-Fi apply", "reboot, node online"], "secret": []}}


def floor(works: int, phase: str, transport, mapping: str, tries: int = 7) -> dict:
    return {"works_kib": works, "fails_kib": works - 1, "tries": tries, "seconds": 15.0, "phase": phase,
            "transport": transport, "mapping": mapping}


def board_crypto(scale: float, pidigits: bool) -> dict:
    figures = {"x25519_ms": [3.3 * scale, 3.5 * scale], "aes_ctr_kib_ms": [0.04 * scale, 0.05 * scale],
               "sec1_handshake_ms": [6.5 * scale, 6.7 * scale], "p256_sign_ms": [1.7 * scale, 1.9 * scale]}
    if pidigits:
        figures["pidigits_ms"] = [150.0, 160.0, 170.0]
        figures["cpu"] = {"factor": 91.5, "host_ms": 1.07, "reference_ms": 97.8, "cached": True,
                          "reference": "bm_pidigits on an ESP32 at 160 MHz, MicroPython commit 549448e8bb (PR #7850)"}
    return figures


def made_up_results(**overrides) -> dict:
    results = {
        "phases": list(PHASES),
        "machine": {"cpu": "Test CPU", "cores": 2, "ram_gib": 8.0, "os": "Linux-test", "python": "3.11.7",
                    "micropython": "MicroPython 1.29", "mpy_cross": "mpy-cross 1.29", "commit": "abc1234",
                    "dirty": False, "date": "2026-12-01 00:00 UTC", "loadavg_start": "0.50 0.40 0.30",
                    "loadavg_end": "1.00 0.80 0.60", "wall_s": 600.0,
                    "sections_s": {"end-to-end": 75.0, "flows": 81.4}},
        "e2e": {"rmkit": [flow(0.8 + i / 100, 0.08) for i in range(20)], "espcli": [flow(10.0, 1.0) for _ in range(5)]},
        "esp32_speed": {"factor": 91.5, "host_ms": 1.07, "cached": False},
        "flows": made_up_flows(),
        "memory": {"floors": {"whole flow, SoftAP, ch_resp": floor(96, "whole", "softap", "ch_resp"),
                              "provisioning, SoftAP, secret key": floor(95, "provisioning", "softap", "secret"),
                              "provisioning, SoftAP, ch_resp": floor(97, "provisioning", "softap", "ch_resp"),
                              "provisioning, BLE, secret key": floor(90, "provisioning", "ble", "secret"),
                              "online phase": floor(76, "online", None, "secret", tries=0)},
                   "ratio": 1.4, "ratio_basis": "a 32-bit build", "tls_in_buffer_bytes": 16717,
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
                   "files": 25, "whole_bytes": 53000, "one_file_bytes": 3000, "changed": "rmnode/online_reports.mpy",
                   "baud": 115200},
        "crypto": {"unix": {"x25519_ms": [3.3, 3.4, 3.2], "aes_ctr_kib_ms": [0.04, 0.038, 0.039],
                            "sec1_handshake_ms": [6.5, 6.6, 6.4], "p256_sign_ms": [1.7, 1.6, 1.8], "inner_runs": 20},
                   "boards": {"host": board_crypto(2.0, False), "esp32": board_crypto(130.0, True),
                              "pidigits_reference_ms": 97.8, "pidigits_reference": "an ESP32 at 160 MHz"}},
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


def rows_of(body: list, number: str, headline_only: bool = True) -> list:
    return [row for row in body if row[0] == number and not (headline_only and row[1].startswith("·"))]


def row_named(body: list, *words: str) -> list:
    return next(row for row in body if all(word in row[1] for word in words))


def test_the_report_has_every_row_beside_its_reference_and_names_the_machine(tmp_path):
    rows, goals = bench_report.write(made_up_results(), tmp_path)

    md = (tmp_path / "results.md").read_text()
    body = table(md)
    assert {row[0] for row in body} == {"1", "2", "3", "4", "5", "6", "7"}
    for row in body:
        assert row[2] not in ("", "—") and row[3] not in ("", "—"), f"a row without its figure or reference: {row}"
    headline = {number: rows_of(body, number)[0] for number in "1234567"}
    assert "esp-rainmaker-cli" in headline["1"][3] and "secret-key flow" in headline["1"][1]
    assert "p90" in headline["1"][2]
    assert all(any(phase in row[1] for row in rows_of(body, "1", False)) for phase in PHASES)
    assert "broker's raw QoS 1" in headline["4"][3] and "msg/s" in headline["4"][3]
    assert any("N = 1000" in row[1] for row in body)
    assert "mpremote cp -r" in headline["5"][3]
    for fact in ("Test CPU", "2 cores", "8 GiB", "abc1234", "2026-12-01", "0.50 0.40 0.30", "MicroPython 1.29",
                 "the run took 10.0 min (end-to-end 75 s, flows 81 s)"):
        assert fact in md

    figures = json.loads((tmp_path / "results.json").read_text())
    assert figures["table"] == rows and figures["e2e"]["rmkit"][0]["phases"]["TLS connect"] == 0.08
    assert (tmp_path / "scale.png").read_bytes().startswith(PNG_SIGNATURE)


def test_memory_rows_give_the_ram_models_phases_in_esp32_bytes_and_the_fixed_heap_floors_honestly(tmp_path):
    bench_report.write(made_up_results(), tmp_path)
    body = table((tmp_path / "results.md").read_text())

    for transport in ("SoftAP", "BLE"):
        for mapping in ("ch_resp", "secret key"):
            row = row_named(body, "provisioning over " + transport, mapping, "RAM model, ESP32 bytes")
            assert row[2] == "largest 112000 B; grew once in 4/4 runs"
            assert "boots with 56000 B" in row[3] and "110592 B at boot" in row[3]
    for mapping in ("ch_resp", "secret key"):
        assert row_named(body, "online phase after " + mapping)[2] == "largest 56000 B; never grew (8/8 runs)"
    tls = row_named(body, "TLS handshake, its minimum")
    assert tls[2] == "65536–69632 B (16 runs)" and "16717 B" in tls[3] and "15360 B" in tls[3]

    floor = row_named(body, "fixed heap", "provisioning, SoftAP, ch_resp")
    assert "64-bit unix-port bytes" in floor[1] and floor[2].startswith("97 KiB (fails at 96 KiB")
    assert "÷ 1.40 ≈ 69 KiB on a 32-bit ESP32" in floor[3]
    assert "secret key: 95 KiB (same run)" in floor[3]  # beside the secret-key flow's floor
    assert "growing heap reached 112000 B" in floor[3]
    assert "ch_resp: 97 KiB (same run)" in row_named(body, "fixed heap", "provisioning, SoftAP, secret key")[3]


def test_a_floor_above_the_search_range_says_so_and_misses_the_goal(tmp_path):
    results = made_up_results()
    results["memory"]["floors"]["whole flow, SoftAP, ch_resp"].update(works_kib=None, fails_kib=120)
    _, goals = bench_report.write(results, tmp_path)
    row = row_named(table((tmp_path / "results.md").read_text()), "fixed heap", "whole flow, SoftAP")
    assert row[2] == "fails even at 120 KiB, the top of the search"
    assert row[3] == "÷ 1.40: more than 86 KiB on a 32-bit ESP32"
    assert goals["heap_64k"] is False


def test_esp32_speed_rows_stand_beside_the_same_measured_at_host_speed_and_name_k_and_its_reference(tmp_path):
    _, goals = bench_report.write(made_up_results(), tmp_path)
    md = (tmp_path / "results.md").read_text()
    body = table(md)

    factor = row_named(body, "the CPU model's factor k")
    assert factor[2].startswith("k = 91.5") and "549448e8bb" in factor[3] and "PR #7850" in factor[3]
    assert factor[2].endswith("(calibrated at the start of this run)")  # the boards read what the run measured
    assert "k = 91.5" in md.split("|")[0]  # said above the table too
    pidigits = row_named(body, "bm_pidigits' work on a virtual board")
    assert pidigits[2].startswith("160 ms (mean of 3 back to back") and "97.8 ms" in pidigits[3]
    x25519 = row_named(body, "X25519", "ESP32 speed")
    assert x25519[2].startswith("442 ms (mean of 2 back to back")  # 130 x 3.4 ms
    assert "a virtual board 6.80 ms" in x25519[3] and "the bare unix port 3.30 ms" in x25519[3]
    sign = row_named(body, "P-256 sign()")
    assert sign[4] == "P-256 sign() ≤ 1.5 s at ESP32 speed" and sign[5] == "yes" and goals["sign_1_5s"] is True
    assert row_named(body, "Security 1 handshake", "ESP32 speed")[2].startswith("858 ms")

    flows = rows_of(body, "7")
    assert [row[1] for row in flows] == [
        f"whole flow to confirmed at ESP32 speed: {mapping} over {transport} (login → the client sees confirmed)"
        for transport in ("SoftAP", "BLE") for mapping in ("ch_resp", "secret key")]
    for row in flows:
        assert row[2] == "7.05 s (7.00–7.10, 2 runs); 2/2 confirmed"
        assert row[3] == "host speed, same run: 550 ms (500–600, 2 runs); 2/2 confirmed"
    phases = [row[1] for row in rows_of(body, "7", headline_only=False)][1:7]
    assert phases == ["· " + p for p in CH_RESP_PHASES] + ["· after confirmed: Wi-Fi apply",
                                                           "· after confirmed: reboot, node online"]
    for gone in ("estimate", "14–18", "× 14"):  # measured, not derived from perf_bench scores
        assert gone not in md


def test_each_figure_is_the_runs_own(tmp_path):
    """Change the measurements and the rows change with them: no figure is a constant of the report."""
    results = made_up_results()
    results["crypto"]["boards"]["esp32"]["cpu"]["factor"] = 77.7
    results["crypto"]["boards"]["esp32"]["p256_sign_ms"] = [1900.0, 2100.0]
    results["crypto"]["boards"]["host"]["x25519_ms"] = [9.0, 11.0]
    results["crypto"]["unix"]["x25519_ms"] = [4.25, 4.5, 4.75]
    results["crypto"]["boards"]["pidigits_reference_ms"] = 110.8
    esp32_ble = [r for r in results["flows"]["runs"] if r["speed"] == "esp32" and r["transport"] == "ble"]
    for run, seconds in zip(esp32_ble, (12.0, 13.0, 14.0, 15.0)):
        run["confirmed_s"] = seconds
    esp32_ble[0]["replaced"] = ["failed: BoardCrashed: vb-flow-esp32-1-3; crashes: killed by SIGSEGV"]
    first_softap = next(r for r in results["flows"]["runs"] if r["transport"] == "softap" and r["mapping"] == "ch_resp")
    first_softap["boots"][0].update(gc_peak=168000, growths=2)
    first_softap["boots"][1].update(growths=1, gc_peak=84000)
    results["memory"]["floors"]["provisioning, SoftAP, secret key"]["works_kib"] = 101

    _, goals = bench_report.write(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    body = table(md)

    factor = row_named(body, "the CPU model's factor k")[2]
    assert factor.startswith("k = 77.7") and factor.endswith("(calibrated earlier on this machine, cached)")
    sign = row_named(body, "P-256 sign()")
    assert sign[2].startswith("2000 ms (mean of 2") and sign[5] == "**no**" and goals["sign_1_5s"] is False
    assert "P-256 sign() ≤ 1.5 s at ESP32 speed: **missed**. one signature took 2000 ms on a virtual board at ESP32 " \
           "speed (k = 77.7)" in md
    x25519 = row_named(body, "X25519", "ESP32 speed")
    assert "a virtual board 10.0 ms" in x25519[3] and "×44" in x25519[3] and "4.50 ms (4.25–4.75, 3 runs)" in x25519[3]
    assert "an ESP32 at 160 MHz: 110.8 ms" in row_named(body, "bm_pidigits' work on a virtual board")[3]
    flows = rows_of(body, "7")
    assert flows[2][2] == "12.50 s (12.00–13.00, 2 runs); 2/2 confirmed (1 on a second board: the first one's " \
                          "MicroPython process crashed)"  # ch_resp over BLE
    assert flows[3][2] == "14.50 s (14.00–15.00, 2 runs); 2/2 confirmed"  # secret key over BLE
    softap = row_named(body, "provisioning over SoftAP", "ch_resp", "RAM model")
    assert softap[2] == "largest 112000–168000 B; grew 1–2 times in 4/4 runs"
    assert row_named(body, "online phase after ch_resp")[2] == "largest 56000–84000 B; grew once in 1/8 runs"
    assert "secret key: 101 KiB (same run)" in row_named(body, "fixed heap", "provisioning, SoftAP, ch_resp")[3]


def test_goals_are_judged_from_the_figures_and_a_miss_says_why(tmp_path):
    _, goals = bench_report.write(made_up_results(), tmp_path)
    assert goals == {"e2e_1s": True, "e2e_5x_cli": True, "heap_64k": False, "mpy_64k": True, "deploy_5x": False,
                     "sign_1_5s": True}
    goals_section = (tmp_path / "results.md").read_text().split("## Goals")[1]
    assert "whole-flow heap floor ≤ 64 KiB on the 32-bit-equivalent board: **missed**. whole flow, SoftAP, ch_resp: " \
           "96 KiB ÷ 1.40 = 69 KiB" in goals_section
    assert "one-file deploy ≥ 5× faster than `mpremote cp -r`: **missed**. our one-file deploy (0.21 s: read the " \
        "board's hashes, copy one file, soft reset) is less than 5 times faster than `mpremote cp -r` of the whole " \
        "tree (0.40 s)" in goals_section
    assert "end-to-end ≤ 1 s: **met**" in goals_section
    assert "P-256 sign() ≤ 1.5 s at ESP32 speed: **met**" in goals_section


def test_a_measurement_that_could_not_run_is_a_row_saying_why(tmp_path):
    results = made_up_results(scale={"unavailable": "RuntimeError: no broker"},
                              e2e={"rmkit": [flow(1.5, 0.15)], "espcli": {"unavailable": "needs `unshare`"}},
                              crypto={"unix": {"unavailable": "CalledProcessError: micropython"},
                                      "boards": {"unavailable": "BoardError: no pidfd_open"}},
                              flows={"unavailable": "BoardCrashed: vb-flow-0"})
    _, goals = bench_report.write(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "esp-rainmaker-cli: not measured (needs `unshare`)" in md
    assert "not measured (RuntimeError: no broker)" in md
    assert "not measured (CalledProcessError: micropython)" in md
    assert "ESP32 speed: not measured (BoardError: no pidfd_open)" in md
    assert "GC heap per phase (the RAM model) | not measured (BoardCrashed: vb-flow-0)" in md
    assert "| 7 | flows | not measured (BoardCrashed: vb-flow-0)" in md
    assert goals["e2e_1s"] is False and goals["e2e_5x_cli"] is None and goals.get("sign_1_5s") is None
    assert "Three phases take most of it" in md
    assert (tmp_path / "scale.png").read_bytes().startswith(PNG_SIGNATURE)


def test_rmkit_bench_help_says_what_it_measures_and_where_the_report_goes():
    rmkit = Path(sys.executable).with_name("rmkit")
    out = subprocess.run([str(rmkit), "bench", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for words in ("bench/results.md", "esp-rainmaker-cli", "heap", "mpremote cp -r", "X25519", "--scale N:RUNS",
                  "--quick", "reference", "ESP32 speed", "--esp32-runs", "ch_resp", "P-256"):
        assert words in text, words
