"""`make bench`'s report: from one run's measurements, bench/results.json (every figure), bench/results.md
(one table, each row beside the reference measured in the same run, then the goals met and missed) and
bench/scale.png (the cloud at scale: p50/p99 and throughput against N, the broker's raw QoS 1 beside).

Only formatting lives here: rmkit.benchmarks.run measures, this writes, so the writer can be tested with small
made-up measurements.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Optional

KIB = 1024

GOALS = {
    "e2e_1s": "end-to-end ≤ 1 s",
    "e2e_5x_cli": "end-to-end ≥ 5× faster than esp-rainmaker-cli",
    "heap_64k": "whole-flow heap floor ≤ 64 KiB on the 32-bit-equivalent board",
    "mpy_64k": "≤ 64 KiB of .mpy including BLE",
    "deploy_5x": "one-file deploy ≥ 5× faster than `mpremote cp -r`",
    "sign_1_5s": "P-256 sign() ≤ 1.5 s at ESP32 speed",
}
TRANSPORTS = {"softap": "SoftAP", "ble": "BLE", "both": "SoftAP + BLE served"}
MAPPINGS = {"ch_resp": "ch_resp", "secret": "secret key"}


# -- numbers ---------------------------------------------------------------------------------------

def percentile(values: list, pct: float) -> float:
    """Nearest rank (p90 of 20 values is the 18th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def spread(values: list, fmt: str = "{:.2f}", unit: str = "") -> str:
    """"median (min–max, n runs)"."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{fmt.format(values[0])}{unit} (1 run)"
    return (f"{fmt.format(statistics.median(values))}{unit} "
            f"({fmt.format(min(values))}–{fmt.format(max(values))}, {len(values)} runs)")


def duration_spread(values: list) -> str:
    """"median (min–max, n runs)" in one unit, chosen by the median."""
    if not values:
        return "—"
    if statistics.median(values) >= 1:
        return spread(values, unit=" s")
    return spread([v * 1000 for v in values], "{:.0f}", " ms")


def milliseconds(value: float) -> str:
    """A time in ms with the digits that mean something."""
    for limit, fmt in ((100, "{:.0f}"), (10, "{:.1f}"), (0.1, "{:.2f}")):
        if value >= limit:
            return fmt.format(value)
    return f"{value:.3f}"


def back_to_back(values: list) -> str:
    """"mean ms (mean of n back to back; single min–max)": the figure for a paced board, whose pacer moves
    time between neighbouring operations (rmkit.benchmarks.node_crypto)."""
    return (f"{milliseconds(statistics.fmean(values))} ms (mean of {len(values)} back to back; single "
            f"{milliseconds(min(values))}–{milliseconds(max(values))})")


def byte_range(values: list) -> str:
    return f"{min(values)} B" if min(values) == max(values) else f"{min(values)}–{max(values)} B"


def _confirmed(runs: list) -> list:
    return [r for r in runs if r.get("status") == "confirmed" and r.get("total_s") is not None]


def _phase(runs: list, phase: str) -> list:
    return [r["phases"][phase] for r in runs if phase in r.get("phases", {})]


# -- rows ------------------------------------------------------------------------------------------

def _row(number: str, measure: str, result: str, reference: str, goal: str = "", met: Optional[bool] = None) -> dict:
    return {"row": number, "measure": measure, "result": result, "reference": reference, "goal": goal, "met": met}


def _unavailable(section) -> Optional[str]:
    return section.get("unavailable") if isinstance(section, dict) else None


def e2e_rows(e2e: dict, phases: tuple) -> tuple[list, dict]:
    ours = _confirmed(e2e["rmkit"])
    cli_missing = _unavailable(e2e["espcli"])
    cli = [] if cli_missing else _confirmed(e2e["espcli"])
    totals = [r["total_s"] for r in ours]
    cli_totals = [r["total_s"] for r in cli]
    ours_text = (f"median {statistics.median(totals):.2f} s, p90 {percentile(totals, 90):.2f} s "
                 f"({min(totals):.2f}–{max(totals):.2f}; {len(ours)}/{len(e2e['rmkit'])} runs confirmed)") if totals else "no run confirmed"
    cli_text = (f"esp-rainmaker-cli: median {statistics.median(cli_totals):.2f} s, p90 {percentile(cli_totals, 90):.2f} s "
                f"({len(cli)}/{len(e2e['espcli'])} runs)") if cli_totals else f"esp-rainmaker-cli: not measured ({cli_missing or 'no run confirmed'})"
    goals = {"e2e_1s": bool(totals) and statistics.median(totals) <= 1.0}
    ratio = statistics.median(cli_totals) / statistics.median(totals) if totals and cli_totals else None
    goals["e2e_5x_cli"] = None if ratio is None else ratio >= 5
    rows = [_row("1", "end-to-end latency, secret-key flow over SoftAP, virtual board at host speed (session → client "
                      "sees confirmed)", ours_text, cli_text,
                 f"{GOALS['e2e_1s']}; ≥ 5× faster (measured {ratio:.1f}×)" if ratio else GOALS["e2e_1s"],
                 goals["e2e_1s"] and bool(goals["e2e_5x_cli"]))]
    for phase in phases:
        mine, theirs = _phase(ours, phase), _phase(cli, phase)
        rows.append(_row("1", f"  · {phase}", spread([v * 1000 for v in mine], "{:.0f}", " ms"),
                         "CLI " + spread([v * 1000 for v in theirs], "{:.0f}", " ms") if theirs else "—"))
    return rows, goals


# -- memory: the RAM model's figures per phase (from the flows of row 7), then the fixed-heap floors -----------

def _flow_runs(flows, transport: Optional[str] = None, mapping: Optional[str] = None) -> list:
    """The confirmed runs of row 7's flows (both speeds) that match."""
    if not flows or _unavailable(flows):
        return []
    return [r for r in flows["runs"] if r["status"] == "confirmed" and (transport in (None, r["transport"]))
            and (mapping in (None, r["mapping"]))]


def provisioning_boots(runs: list) -> list:
    """The provisioning phase is the first boot of a run."""
    return [r["boots"][0] for r in runs if r.get("boots")]


def online_boots(runs: list) -> list:
    """The online phase is the last boot of a run that rebooted after provisioning."""
    return [r["boots"][-1] for r in runs if len(r.get("boots", [])) >= 2]


def _growths(boots: list) -> str:
    """How often the GC heap grew in these boots (one per run), e.g. "grew once in 4/4 runs"."""
    counts = sorted({b["growths"] for b in boots if b["growths"]})
    if not counts:
        return f"never grew ({len(boots)}/{len(boots)} runs)"
    grew = sum(1 for b in boots if b["growths"])
    times = "once" if counts == [1] else f"{counts[0]}–{counts[-1]} times" if len(counts) > 1 else f"{counts[0]} times"
    return f"grew {times} in {grew}/{len(boots)} runs"


def ram_model_rows(flows) -> list:
    """Each phase's largest GC heap and growths, ESP32 bytes, from the RAM model's log of row 7's runs."""
    if not flows or _unavailable(flows):
        return [_row("2", "GC heap per phase (the RAM model)", f"not measured ({_unavailable(flows) or 'no flows'})",
                     "—")]
    rows = []
    for transport in ("softap", "ble"):
        for mapping in MAPPINGS:
            boots = provisioning_boots(_flow_runs(flows, transport, mapping))
            if not boots:
                continue
            rows.append(_row("2", f"GC heap, provisioning over {TRANSPORTS[transport]}, {MAPPINGS[mapping]} (RAM model, "
                                  f"ESP32 bytes, both speeds)",
                             f"largest {byte_range([b['gc_peak'] for b in boots])}; {_growths(boots)}",
                             f"boots with {byte_range([b['gc_at_boot'] for b in boots])}; ESP-IDF's largest free block "
                             f"{byte_range([b['largest_at_boot'] for b in boots])} at boot, "
                             f"{byte_range([b['largest_min'] for b in boots])} at its lowest"))
    for mapping, what in (("ch_resp", "TLS connect, config report"), ("secret", "TLS connect, config and mapping "
                                                                                 "publish")):
        boots = online_boots(_flow_runs(flows, mapping=mapping))
        if boots:
            rows.append(_row("2", f"GC heap, online phase after {MAPPINGS[mapping]} ({what}; RAM model, ESP32 bytes)",
                             f"largest {byte_range([b['gc_peak'] for b in boots])}; {_growths(boots)}",
                             f"boots with {byte_range([b['gc_at_boot'] for b in boots])} (its own boot: the node "
                             f"reboots after provisioning)"))
    return rows


def tls_row(flows, memory: dict) -> list:
    boots = [b for b in online_boots(_flow_runs(flows)) if b.get("tls_largest_min") is not None]
    if not boots:
        return []
    return [_row("2", "largest free internal RAM block at the TLS handshake, its minimum (RAM model, both flows)",
                 f"{byte_range([b['tls_largest_min'] for b in boots])} ({len(boots)} runs)",
                 f"{byte_range([b['largest_at_boot'] for b in boots])} at the online phase's boot; a session needs one "
                 f"free block of {memory.get('tls_in_buffer_bytes', '?')} B for its input buffer, its handshake "
                 f"{memory.get('tls_peak_bytes', '?')} B more (vboard/esp32_ram.c)")]


def _model_peak(flows, floor: dict) -> Optional[int]:
    """The largest GC heap the RAM model reached in the phase a floor is about (row 7's runs), ESP32 bytes."""
    runs = _flow_runs(flows, floor.get("transport"), floor.get("mapping"))
    boots = {"provisioning": provisioning_boots(runs), "online": online_boots(runs),
             "whole": [b for r in runs for b in r.get("boots", [])]}.get(floor.get("phase"), [])
    return max((b["gc_peak"] for b in boots), default=None)


def _twin(floors: dict, floor: dict) -> Optional[tuple]:
    """The floor of the same phase and transport by the other mapping, measured in the same run."""
    for name, other in floors.items():
        if other is not floor and other.get("phase") == floor.get("phase") == "provisioning" \
                and other.get("transport") == floor.get("transport") and other.get("mapping") != floor.get("mapping") \
                and other.get("works_kib") is not None:
            return MAPPINGS.get(other["mapping"], other["mapping"]), other["works_kib"]
    return None


def floor_rows(memory: dict, flows) -> tuple[list, dict]:
    ratio = memory["ratio"]
    rows, goals = [], {}
    for name, floor in memory["floors"].items():
        whole = floor.get("phase") == "whole" or name.startswith("whole flow")
        label = f"GC heap floor, fixed heap (no growth): {name} (64-bit unix-port bytes, .mpy)"
        if floor.get("works_kib") is None:
            rows.append(_row("2", label, f"fails even at {floor['fails_kib']} KiB, the top of the search",
                             f"÷ {ratio:.2f}: more than {floor['fails_kib'] / ratio:.0f} KiB on a 32-bit ESP32"))
            if whole:
                goals.setdefault("heap_64k", False)
            continue
        estimate = floor["works_kib"] / ratio
        met = estimate <= 64 if whole else None
        if whole:
            goals["heap_64k"] = goals.get("heap_64k", True) and met
        how = f"{floor['tries']} tries, {floor['seconds']:.0f} s" if floor.get("tries") else f"{floor['seconds']:.0f} s"
        reference = [f"÷ {ratio:.2f} ≈ {estimate:.0f} KiB on a 32-bit ESP32"]
        twin = _twin(memory["floors"], floor)
        if twin:
            reference.append(f"{twin[0]}: {twin[1]} KiB (same run)")
        peak = _model_peak(flows, floor)
        if peak is not None:
            reference.append(f"the RAM model's growing heap reached {peak} B ({peak / KIB:.1f} KiB) in this phase")
        rows.append(_row("2", label, f"{floor['works_kib']} KiB (fails at {floor['fails_kib']} KiB; {how})",
                         "; ".join(reference), GOALS["heap_64k"] if whole else "", met))
    rows.append(_row("2", "64-bit → 32-bit heap ratio used", f"{ratio:.2f}", memory["ratio_basis"]))
    return rows, goals


def memory_rows(memory: dict, flows) -> tuple[list, dict]:
    """The RAM model's rows (from row 7's flows), then the floors (or why they are missing)."""
    if _unavailable(memory):
        return ram_model_rows(flows) + [_row("2", "GC heap floors", f"not measured ({_unavailable(memory)})", "—")], {}
    rows, goals = floor_rows(memory, flows)
    return ram_model_rows(flows) + tls_row(flows, memory) + rows, goals


def footprint_rows(footprint: dict) -> tuple[list, dict]:
    total = footprint["mpy_total"]
    met = total <= 64 * KIB
    rows = [_row("3", "flash: deployed .mpy, total (rmnode package, BLE included)",
                 f"{total} B ({total / KIB:.1f} KiB)",
                 f".py sources {footprint['py_total']} B ({footprint['py_total'] / KIB:.1f} KiB); with boot.py and "
                 f"main.py {footprint['deployed_total']} B in {footprint['deployed_blocks']} blocks of "
                 f"{footprint['block_bytes']} B", GOALS["mpy_64k"], met)]
    for path, sizes in footprint["modules"].items():
        rows.append(_row("3", f"  · {path}", f"{sizes['mpy']} B", f".py {sizes['py']} B"))
    return rows, {"mpy_64k": met}


def scale_by_n(scale: dict) -> dict:
    """N -> {key: [values over runs]} for the figures the table and the picture use."""
    keys = ("p50_s", "p99_s", "mappings_per_s", "raw_qos1_per_s", "raw_qos1_p99_s", "confirmed")
    by_n: dict = {}
    for run in scale["rows"]:
        entry = by_n.setdefault(run["nodes"], {k: [] for k in keys})
        for key in keys:
            entry[key].append(run[key])
    return dict(sorted(by_n.items()))


def scale_rows(scale: dict) -> list:
    missing = _unavailable(scale)
    if missing:
        return [_row("4", "cloud at scale", f"not measured ({missing})", "—")]
    rows = []
    for n, figures in scale_by_n(scale).items():
        confirmed = f"{min(figures['confirmed'])}/{n}"
        rows.append(_row("4", f"cloud at scale, N = {n}: PUT → confirmed, N clients and N nodes at once",
                         f"{spread(figures['mappings_per_s'], '{:.0f}', ' mappings/s')}; p50 "
                         f"{spread(figures['p50_s'], unit=' s')}; p99 {spread(figures['p99_s'], unit=' s')}; "
                         f"fewest confirmed {confirmed}",
                         f"the broker's raw QoS 1, same message size: "
                         f"{spread(figures['raw_qos1_per_s'], '{:.0f}', ' msg/s')}, "
                         f"p99 {spread([v * 1000 for v in figures['raw_qos1_p99_s']], '{:.0f}', ' ms')}"))
    return rows


def deploy_rows(deploy: dict) -> tuple[list, dict]:
    s = deploy["seconds"]
    baud = deploy.get("baud")
    link = f"the virtual board's UART at {baud} baud" if baud else "the virtual board's pty, no baud rate"
    ratio = statistics.median(s["mpremote_whole"]) / statistics.median(s["rmkit_one"])
    met = ratio >= 5
    rows = [
        _row("5", f"deploy over the serial port ({link}), whole firmware ({deploy['files']} files, "
                  f"{deploy['whole_bytes']} B)",
             spread(s["rmkit_whole"], unit=" s"), f"`mpremote cp -r` of the same tree: {spread(s['mpremote_whole'], unit=' s')}"),
        _row("5", f"deploy, one-file change ({deploy['changed']}, {deploy['one_file_bytes']} B)",
             spread(s["rmkit_one"], unit=" s"),
             f"whole-tree `mpremote cp -r` / ours = {ratio:.1f}×; `mpremote cp -r` after the same change (it skips "
             f"files whose hash the board holds): {spread(s['mpremote_one'], unit=' s')}", GOALS["deploy_5x"], met),
    ]
    return rows, {"deploy_5x": met}


# -- crypto (row 6) and the whole flows (row 7) at ESP32 speed ------------------------------------------

CRYPTO_OPERATIONS = (("x25519_ms", "X25519 scalar multiplication"),
                     ("sec1_handshake_ms", "Security 1 handshake, device side (Cmd0 + Cmd1)"),
                     ("p256_sign_ms", "ECDSA P-256 sign(), one signature"),
                     ("aes_ctr_kib_ms", "AES-256-CTR per KiB"))


def _unix_spread(unix: dict, key: str) -> str:
    return spread(unix[key], "{:.3f}" if key == "aes_ctr_kib_ms" else "{:.2f}", " ms")


def crypto_rows(crypto: dict, calibration: Optional[dict] = None) -> tuple[list, dict]:
    """Row 6; `calibration` is k as the run measured it before its boards started (rmkit.benchmarks.run)."""
    unix = crypto.get("unix") or {}
    boards = crypto.get("boards") or {}
    if _unavailable(boards):
        rows = [_row("6", f"{name} on the bare unix port, host speed",
                     _unix_spread(unix, key) if not _unavailable(unix) else f"not measured ({_unavailable(unix)})",
                     f"ESP32 speed: not measured ({_unavailable(boards)})") for key, name in CRYPTO_OPERATIONS]
        return rows, {}
    esp32, host, cpu = boards["esp32"], boards["host"], boards["esp32"]["cpu"]
    rows = [_row("6", "ESP32 speed: the CPU model's factor k (virtual boards with cpu=\"esp32\", rows 6-7)",
                 f"k = {cpu['factor']:.1f}: bm_pidigits' work takes {cpu['host_ms']:.2f} ms of CPU here, paced "
                 f"({_calibrated(cpu, calibration)})",
                 cpu["reference"])]
    pidigits = esp32.get("pidigits_ms") or []
    if pidigits:
        rows.append(_row("6", "bm_pidigits' work on a virtual board at ESP32 speed", back_to_back(pidigits),
                         f"an ESP32 at 160 MHz: {boards['pidigits_reference_ms']:.1f} ms; the board takes "
                         f"{statistics.fmean(pidigits) / boards['pidigits_reference_ms']:.2f}× that (the simulator's "
                         f"objects share its GC heap: rmkit.vboard.cpu_speed)"))
    goals = {}
    for key, name in CRYPTO_OPERATIONS:
        mine, theirs = esp32[key], host[key]
        reference = (f"host speed, same run: a virtual board {back_to_back(theirs)}, "
                     f"×{statistics.fmean(mine) / statistics.fmean(theirs):.0f}")
        if not _unavailable(unix) and unix.get(key):
            reference += f"; the bare unix port {_unix_spread(unix, key)}"
        goal, met = "", None
        if key == "p256_sign_ms":
            goal, met = GOALS["sign_1_5s"], statistics.fmean(mine) <= 1500
            goals["sign_1_5s"] = met
        rows.append(_row("6", f"{name} at ESP32 speed (virtual board)", back_to_back(mine), reference, goal, met))
    return rows, goals


def _calibrated(cpu: dict, calibration: Optional[dict]) -> str:
    """When k was measured: by this run before its boards started, or by an earlier one (a cache)."""
    if not cpu["cached"] or (calibration and not _unavailable(calibration) and not calibration.get("cached")
                             and calibration.get("factor") == cpu["factor"]):
        return "calibrated at the start of this run"
    return "calibrated earlier on this machine, cached"


def _flow_phase(runs: list, phase: str) -> list:
    return [r["phases"][phase] for r in runs if phase in r.get("phases", {})]


def flow_rows(flows: dict) -> list:
    rows = []
    for transport in ("softap", "ble"):
        for mapping in MAPPINGS:
            every = [r for r in flows["runs"] if r["transport"] == transport and r["mapping"] == mapping]
            esp32 = [r for r in every if r["speed"] == "esp32"]
            host = [r for r in every if r["speed"] == "host"]
            mine, theirs = _confirmed_flows(esp32), _confirmed_flows(host)
            rows.append(_row("7", f"whole flow to confirmed at ESP32 speed: {MAPPINGS[mapping]} over "
                                  f"{TRANSPORTS[transport]} (login → the client sees confirmed)",
                             f"{duration_spread([r['confirmed_s'] for r in mine])}; {len(mine)}/{len(esp32)} confirmed"
                             f"{_repeated(esp32)}",
                             f"host speed, same run: {duration_spread([r['confirmed_s'] for r in theirs])}; "
                             f"{len(theirs)}/{len(host)} confirmed{_repeated(host)}"))
            for phase in flows["phases"][mapping]:
                rows.append(_row("7", f"  · {phase}", duration_spread(_flow_phase(mine, phase)),
                                 "host " + duration_spread(_flow_phase(theirs, phase))))
            for phase in flows["after_confirmed"][mapping]:
                rows.append(_row("7", f"  · after confirmed: {phase}", duration_spread(_flow_phase(mine, phase)),
                                 "host " + duration_spread(_flow_phase(theirs, phase))))
    return rows


def _repeated(runs: list) -> str:
    """Runs done again on a new board because the first one's MicroPython process crashed (mapping_flows)."""
    again = sum(1 for r in runs if r.get("replaced"))
    return f" ({again} on a second board: the first one's MicroPython process crashed)" if again else ""


def _confirmed_flows(runs: list) -> list:
    return [r for r in runs if r["status"] == "confirmed" and r.get("confirmed_s") is not None]


SECTIONS = (("1", "e2e", lambda section, results: e2e_rows(section, tuple(results["phases"]))),
            ("2", "memory", lambda section, results: memory_rows(section, results.get("flows"))),
            ("3", "footprint", lambda section, _: footprint_rows(section)),
            ("4", "scale", lambda section, _: (scale_rows(section), {})),
            ("5", "deploy", lambda section, _: deploy_rows(section)),
            ("6", "crypto", lambda section, results: crypto_rows(section, results.get("esp32_speed"))),
            ("7", "flows", lambda section, _: (flow_rows(section), {})))


def table_rows(results: dict) -> tuple[list, dict]:
    """Every row of the table, in the issue's order, and the goals' verdicts (None: not measured)."""
    rows, goals = [], {}
    for number, key, make in SECTIONS:
        section = results[key]
        if _unavailable(section) and key not in ("scale", "memory"):  # these say what is missing themselves
            rows.append(_row(number, key, f"not measured ({_unavailable(section)})", "—"))
            continue
        section_rows, section_goals = make(section, results)
        rows += section_rows
        goals.update(section_goals)
    return rows, goals


def miss_reasons(results: dict, goals: dict) -> dict:
    """One sentence per goal missed, from the run's own figures."""
    reasons = {}
    e2e = results["e2e"]
    ours = [] if _unavailable(e2e) else _confirmed(e2e["rmkit"])
    if goals.get("e2e_1s") is False and ours:
        medians = {p: statistics.median(_phase(ours, p)) for p in results["phases"] if _phase(ours, p)}
        largest = sorted(medians.items(), key=lambda item: -item[1])[:3]
        reasons["e2e_1s"] = ("Three phases take most of it: " + ", ".join(f"{p} {v * 1000:.0f} ms" for p, v in largest)
                             + " (medians; the virtual board's Wi-Fi joins take the air file's join time, and the "
                               "node reboots into station mode after Connected)")
    if goals.get("e2e_5x_cli") is False:
        reasons["e2e_5x_cli"] = "esp-rainmaker-cli's median is less than 5 times ours"
    memory = results["memory"]
    if goals.get("heap_64k") is False and not _unavailable(memory):
        whole = {n: f for n, f in memory["floors"].items() if n.startswith("whole flow") and f.get("works_kib")}
        reasons["heap_64k"] = "; ".join(f"{n}: {f['works_kib']} KiB ÷ {memory['ratio']:.2f} = "
                                        f"{f['works_kib'] / memory['ratio']:.0f} KiB" for n, f in whole.items())
    if goals.get("mpy_64k") is False:
        reasons["mpy_64k"] = f"{results['footprint']['mpy_total'] / KIB:.1f} KiB of .mpy"
    if goals.get("sign_1_5s") is False:
        boards = results["crypto"]["boards"]
        reasons["sign_1_5s"] = (f"one signature took {statistics.fmean(boards['esp32']['p256_sign_ms']):.0f} ms on a "
                                f"virtual board at ESP32 speed (k = {boards['esp32']['cpu']['factor']:.1f})")
    deploy = results["deploy"]
    if goals.get("deploy_5x") is False:
        s = deploy["seconds"]
        reasons["deploy_5x"] = (f"our one-file deploy ({statistics.median(s['rmkit_one']):.2f} s: read the board's hashes, "
                                f"copy one file, soft reset) is less than 5 times faster than `mpremote cp -r` of the "
                                f"whole tree ({statistics.median(s['mpremote_whole']):.2f} s)"
                                + ("" if deploy.get("baud") else " over a pty without a baud rate, where bytes cost "
                                   "almost nothing"))
    return reasons


# -- files -----------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(results: dict, rows: list, goals: dict, reasons: dict) -> str:
    m = results["machine"]
    lines = [
        "# `make bench` results", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']:.0f} GiB RAM; {m['os']}. Python {m['python']}, "
        f"MicroPython (unix port) {m['micropython']}, mpy-cross {m['mpy_cross']}.  ",
        f"Commit {m['commit']}{' (with uncommitted changes)' if m.get('dirty') else ''}, {m['date']}; "
        f"load average {m['loadavg_start']} at the start, {m['loadavg_end']} at the end; the run took "
        f"{m['wall_s'] / 60:.1f} min{_sections(m)}.  ",
        "Each figure is the median of repeated runs with its min–max, unless it says otherwise (the crypto times of "
        "row 6 on virtual boards are means of back-to-back runs); the reference beside it was measured in the same "
        "run.  ", esp32_speed_note(results), "",
        "| # | measure | result | reference (same run) | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = "" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(f"| {row['row']} | {_cell(row['measure'])} | {_cell(row['result'])} | {_cell(row['reference'])} "
                     f"| {_cell(row['goal'])} | {met} |")
    lines += ["", "## Goals", ""]
    for key, text in GOALS.items():
        state = goals.get(key)
        verdict = "not measured" if state is None else ("met" if state else "missed")
        lines.append(f"- {text}: **{verdict}**" + (f". {reasons[key]}" if reasons.get(key) else ""))
    lines += ["", "![the cloud at scale](scale.png)", ""]
    return "\n".join(lines)


def _sections(machine: dict) -> str:
    took = machine.get("sections_s") or {}
    return (" (" + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in took.items()) + ")") if took else ""


def esp32_speed_note(results: dict) -> str:
    """What "ESP32 speed" means in rows 6-7, with k and the run counts as this run had them."""
    boards = (results.get("crypto") or {}).get("boards") or {}
    flows = results.get("flows") or {}
    factor = "" if _unavailable(boards) or not boards else f", k = {boards['esp32']['cpu']['factor']:.1f} (row 6)"
    counts = ""
    if flows and not _unavailable(flows):
        runs = Counter((r["speed"], r["transport"], r["mapping"]) for r in flows["runs"])
        most = {speed: max((n for (s, _, _), n in runs.items() if s == speed), default=0) for speed in ("esp32", "host")}
        counts = (f"; the whole flows of row 7 ran {most['esp32']} times each at ESP32 speed and {most['host']} at host "
                  f"speed (a Security 1 handshake takes seconds at ESP32 speed)")
    return (f"ESP32 speed: virtual boards with cpu=\"esp32\", stopped for k − 1 times every CPU second they use"
            f"{factor}{counts}.")


def draw_scale(scale: dict, path: Path) -> None:
    """Two panels against N: latency (p50, p99 of PUT -> confirmed; the broker's raw QoS 1 p99 dashed)
    and throughput (mappings/s; the broker's raw QoS 1 msg/s dashed); medians with min–max bars."""
    import matplotlib

    matplotlib.use("Agg")  # no display; a file only
    import matplotlib.pyplot as plt

    fig, (latency, throughput) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    by_n = {} if _unavailable(scale) else scale_by_n(scale)
    ns = list(by_n)

    def plot(axes, key: str, label: str, style: str, color: str) -> None:
        mids = [statistics.median(by_n[n][key]) for n in ns]
        bars = [[mid - min(by_n[n][key]) for n, mid in zip(ns, mids)], [max(by_n[n][key]) - mid for n, mid in zip(ns, mids)]]
        axes.errorbar(ns, mids, yerr=bars, fmt=style, color=color, capsize=3, label=label)

    if ns:
        plot(latency, "p50_s", "mapping: PUT → confirmed, p50", "o-", "tab:blue")
        plot(latency, "p99_s", "mapping: PUT → confirmed, p99", "s-", "tab:red")
        plot(latency, "raw_qos1_p99_s", "broker alone: QoS 1 publish → PUBACK, p99", "s--", "tab:gray")
        plot(throughput, "mappings_per_s", "mappings confirmed per second", "^-", "tab:green")
        plot(throughput, "raw_qos1_per_s", "broker alone: QoS 1 messages per second", "^--", "tab:gray")
        for axes in (latency, throughput):
            axes.set_xscale("log")
            axes.set_yscale("log")
            axes.set_xticks(ns, [str(n) for n in ns])
            axes.minorticks_off()
            axes.set_xlabel("N (nodes and clients mapping at once)")
            axes.legend(fontsize=8, loc="best")
            axes.grid(True, alpha=0.3)
    else:
        latency.text(0.5, 0.5, f"not measured: {_unavailable(scale)}", ha="center", transform=latency.transAxes)
    latency.set_ylabel("seconds")
    latency.set_title("latency")
    throughput.set_ylabel("per second")
    throughput.set_title("throughput")
    fig.suptitle("Local cloud at scale (medians of the runs, bars min–max; dashed: the broker's raw QoS 1, same size)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def write(results: dict, out_dir: Path) -> tuple[list, dict]:
    """bench/results.json, results.md and scale.png in `out_dir`; returns the table rows and goals."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, goals = table_rows(results)
    reasons = miss_reasons(results, goals)
    (out_dir / "results.json").write_text(json.dumps({**results, "table": rows, "goals": goals, "reasons": reasons}, indent=1,
                                                     ensure_ascii=False) + "\n")
    (out_dir / "results.md").write_text(markdown(results, rows, goals, reasons))
    draw_scale(results["scale"], out_dir / "scale.png")
    return rows, goals
