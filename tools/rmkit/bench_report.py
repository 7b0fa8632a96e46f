"""`make bench`'s report: from one run's measurements, bench/results.json (every figure), bench/results.md
(one table, each row beside the reference measured in the same run, then the goals met and missed) and
bench/scale.png (the cloud at scale: p50/p99 and throughput against N, the broker's raw QoS 1 beside).

Only formatting lives here: rmkit.bench measures, this writes, so the writer can be tested with small
made-up measurements.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Optional

KIB = 1024

GOALS = {
    "e2e_1s": "end-to-end ≤ 1 s",
    "e2e_5x_cli": "end-to-end ≥ 5× faster than esp-rainmaker-cli",
    "heap_64k": "whole-flow heap floor ≤ 64 KiB on the 32-bit-equivalent board",
    "mpy_64k": "≤ 64 KiB of .mpy including BLE",
    "deploy_5x": "one-file deploy ≥ 5× faster than `mpremote cp -r`",
}


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
    rows = [_row("1", "end-to-end latency, virtual board (session → client sees confirmed)", ours_text, cli_text,
                 f"{GOALS['e2e_1s']}; ≥ 5× faster (measured {ratio:.1f}×)" if ratio else GOALS["e2e_1s"],
                 goals["e2e_1s"] and bool(goals["e2e_5x_cli"]))]
    for phase in phases:
        mine, theirs = _phase(ours, phase), _phase(cli, phase)
        rows.append(_row("1", f"  · {phase}", spread([v * 1000 for v in mine], "{:.0f}", " ms"),
                         "CLI " + spread([v * 1000 for v in theirs], "{:.0f}", " ms") if theirs else "—"))
    return rows, goals


def memory_rows(memory: dict) -> tuple[list, dict]:
    ratio = memory["ratio"]
    rows, goals = [], {}
    for name, floor in memory["floors"].items():
        if floor.get("works_kib") is None:
            rows.append(_row("2", f"GC heap floor: {name}", f"fails even at {floor['fails_kib']}K", "—"))
            if name.startswith("whole flow"):
                goals.setdefault("heap_64k", False)
            continue
        estimate = floor["works_kib"] / ratio
        whole = name.startswith("whole flow")
        met = estimate <= 64 if whole else None
        if whole:
            goals["heap_64k"] = goals.get("heap_64k", True) and met
        how = f"{floor['tries']} tries, {floor['seconds']:.0f} s" if floor.get("tries") else f"{floor['seconds']:.0f} s"
        rows.append(_row("2", f"GC heap floor: {name} (64-bit unix port, .mpy)",
                         f"{floor['works_kib']} KiB (fails at {floor['fails_kib']} KiB; {how})",
                         f"ESP32 estimate {estimate:.0f} KiB (÷ {ratio:.2f}); board default 110 KiB",
                         GOALS["heap_64k"] if whole else "", met))
    ram = memory.get("internal_ram") or []
    if ram:
        lowest = [low for _, low in ram]
        free = [f for f, _ in ram]
        rows.append(_row("2", "internal-RAM headroom at the TLS handshake (the virtual board's ESP32 RAM model)",
                         spread(lowest, "{:.0f}", " B"),
                         f"free once online {spread(free, '{:.0f}', ' B')}; a handshake needs "
                         f"{memory.get('tls_peak_bytes', 0)} B on top of the session's buffers"))
    rows.append(_row("2", "64-bit → 32-bit heap ratio used", f"{ratio:.2f}", memory["ratio_basis"]))
    return rows, goals


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


def crypto_rows(crypto: dict) -> list:
    bigint, bytecode = crypto["slowdown"]["bm_pidigits"], crypto["slowdown"]["misc_pystone"]

    def estimate(values: list, factor: tuple, unit: str) -> str:
        median = statistics.median(values)
        return f"ESP32 estimate {median * factor[0]:.1f}–{median * factor[1]:.1f} {unit} (× {factor[0]:.0f}–{factor[1]:.0f})"

    return [
        _row("6", "X25519 scalar multiplication (unix port)", spread(crypto["x25519_ms"], unit=" ms"),
             estimate(crypto["x25519_ms"], bigint, "ms")),
        _row("6", "AES-256-CTR per KiB (unix port)", spread(crypto["aes_ctr_kib_ms"], "{:.3f}", " ms"),
             estimate(crypto["aes_ctr_kib_ms"], bytecode, "ms")),
        _row("6", "Security 1 handshake, device side (unix port)", spread(crypto["sec1_handshake_ms"], unit=" ms"),
             estimate(crypto["sec1_handshake_ms"], bigint, "ms")),
        _row("6", "  · basis of the ESP32 estimate", "big ints: bm_pidigits; bytecode: misc_pystone", crypto["basis"]),
    ]


SECTIONS = (("1", "e2e", lambda section, results: e2e_rows(section, tuple(results["phases"]))),
            ("2", "memory", lambda section, _: memory_rows(section)),
            ("3", "footprint", lambda section, _: footprint_rows(section)),
            ("4", "scale", lambda section, _: (scale_rows(section), {})),
            ("5", "deploy", lambda section, _: deploy_rows(section)),
            ("6", "crypto", lambda section, _: (crypto_rows(section), {})))


def table_rows(results: dict) -> tuple[list, dict]:
    """Every row of the table, in the issue's order, and the goals' verdicts (None: not measured)."""
    rows, goals = [], {}
    for number, key, make in SECTIONS:
        section = results[key]
        if _unavailable(section) and key != "scale":
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
        f"{m['wall_s'] / 60:.1f} min.  ",
        "Each figure is the median of repeated runs with its min–max; the reference beside it was measured in the "
        "same run.", "",
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
