"""A virtual board at an ESP32's CPU speed (VirtualBoard(cpu="esp32"), rmkit.vboard.cpu): computing takes a
board's time, an idle board answers at once, and no process is ever left stopped (reset, power cut, stop,
SIGTERM of the host) or deaf to Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from rmkit.vboard import runtime
from rmkit.vboard.cpu import CpuPacer, cpu_clock
from rmkit.vboard.cpu_speed import CACHE_NAME, ESP32_PIDIGITS_MS, WORKLOAD, cpu_speed, measure
from rmkit.vboard.rawrepl import RawRepl
from rmkit.vboard.supervisor import LAUNCHER

from support.paths import VENV_BIN
from support.wait import wait_until

pytestmark = pytest.mark.board  # tier: virtual boards (support/tiers.py)

RMKIT = str(VENV_BIN / "rmkit")
BUSY_MAIN = "print('main computing')\nwhile True:\n    pass\n"
TIMED_RUNS = ("import time\nt0 = time.ticks_us()\nfor _ in range({runs}):\n    pi_digits()\n"
              "print(time.ticks_diff(time.ticks_us(), t0) / {runs} / 1000)")


def process_state(pid: int) -> Optional[str]:
    """The State letter of /proc/PID/status (R, S, T...), or None once the process is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("State:"):
                    state = line.split()[1]
                    return None if state in ("Z", "X") else state
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def wait_until_paced(pid: int) -> None:
    """A computing paced process spends most of its time stopped: wait until the pacer has stopped it."""
    wait_until(lambda: process_state(pid) == "T", timeout=10, interval=0.005, what=f"process {pid} stopped by the pacer")


def board_ms_a_run(board, runs: int) -> float:
    """pi_spigot.py's run, timed on the board with time.ticks_us over `runs` runs."""
    return float(board.exec(TIMED_RUNS.format(runs=runs), timeout=120))


def test_the_benchmark_runs_at_the_calibrated_speed_on_a_board_and_far_faster_at_full_speed(vboard_factory,
                                                                                          esp32_speed):
    """The pacer charges a board exactly its CPU times the factor; a board is then no faster than an
    ESP32 at the benchmark the factor is calibrated with. It is slower, about 1.5x here: the simulator's
    objects fragment the board's GC heap (see rmkit.vboard.cpu_speed), which the pacer charges too."""
    esp32 = vboard_factory(**esp32_speed)
    full = vboard_factory()
    source = WORKLOAD.read_text()
    esp32.exec(source)
    full.exec(source)
    clock = cpu_clock(esp32.pids[-1])
    cpu_before = time.clock_gettime_ns(clock)
    paced_ms = board_ms_a_run(esp32, runs=30)  # ~4 s: spans the host's changes of speed
    cpu_ms = (time.clock_gettime_ns(clock) - cpu_before) / 1e6 / 30
    full_ms = board_ms_a_run(full, runs=100)
    factor = esp32.cpu_speed.factor
    print(f"\nESP32-speed board {paced_ms:.1f} ms a run (its CPU {cpu_ms:.2f} ms x factor {factor:.0f} = "
          f"{cpu_ms * factor:.1f} ms); full speed {full_ms:.2f} ms; published ESP32 {ESP32_PIDIGITS_MS:.1f} ms")
    assert paced_ms == pytest.approx(cpu_ms * factor, rel=0.15)  # the board's time is its CPU times the factor
    # The lower bound is the promise (never faster than an ESP32). The upper one only catches a factor
    # gone wild: a busy host slows the board's own CPU time too (caches, frequency), 2.9x was seen with
    # the whole suite running beside it, and 4.1x once since each collection also stops the board's other
    # threads (tools/rmkit/vboard/gc_world.c: a look at /proc/self/task, even when there are none).
    assert 0.75 * ESP32_PIDIGITS_MS <= paced_ms <= 5 * ESP32_PIDIGITS_MS
    assert full_ms < ESP32_PIDIGITS_MS / 20


def run_delay_s(pid: int) -> float:
    """How long the process has waited for a CPU while runnable (/proc/PID/schedstat, second field)."""
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[1]) / 1e9


def test_the_calibrated_factor_gives_the_published_esp32_time_in_a_bare_micropython():
    """Where the published figure was taken, a bare MicroPython with an ESP32's heap, the benchmark paced at
    the calibrated factor takes the ESP32's time: factor x this host's CPU for a run. Both halves are checked,
    because the second moves with the host's load (its CPU time for the same work changed up to 1.5x with the
    whole suite running, through caches and clock speed, in either direction):
    - pacing: a run takes factor x the CPU it used, within 25 %, once what a loaded host adds on top is taken
      off (the time the process waited for a CPU, and the time the pacer, waking up late, kept it stopped beyond
      its debt: rmkit.vboard.cpu credits only one slice of that);
    - calibration: the CPU a run uses is what the calibration measured (calibrated here, seconds before, not
      taken from the run's cache), within the load's swing; on a quiet machine the run then takes the ESP32's
      97.8 ms within 25 % (printed)."""
    runs = 40
    host_ms = measure()["host_ms"]
    factor = ESP32_PIDIGITS_MS / host_ms
    code = WORKLOAD.read_text() + "print('go')\n" + TIMED_RUNS.format(runs=runs)
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "-X", "heapsize=110K", "-c", code],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, VBOARD_PARENT=str(os.getpid())))
    pacer = CpuPacer(factor)
    pacer.start()
    try:
        pacer.follow(proc.pid, ready=lambda: True)
        clock = cpu_clock(proc.pid)
        assert proc.stdout.readline().strip() == "go"
        cpu_ns, waited_s, before = time.clock_gettime_ns(clock), run_delay_s(proc.pid), pacer.stats()
        ms_a_run = float(proc.stdout.readline())
        cpu_ns, waited_s, after = (time.clock_gettime_ns(clock) - cpu_ns, run_delay_s(proc.pid) - waited_s,
                                   pacer.stats())
        assert proc.wait(timeout=60) == 0
    finally:
        pacer.close()
        proc.kill()
        proc.wait()
        proc.stdout.close()
    cpu_ms = cpu_ns / 1e6 / runs
    paused_s, charged_s = after.paused_s - before.paused_s, after.charged_cpu_s - before.charged_cpu_s
    added_ms = (waited_s + max(0.0, paused_s - charged_s * (factor - 1))) * 1000 / runs
    print(f"\nbare MicroPython paced at x{factor:.0f}: {ms_a_run:.1f} ms a run (published ESP32: "
          f"{ESP32_PIDIGITS_MS:.1f} ms); its CPU {cpu_ms:.2f} ms a run (calibrated: {host_ms:.2f} ms); the loaded "
          f"host added {added_ms:.1f} ms")
    assert ms_a_run - added_ms == pytest.approx(factor * cpu_ms, rel=0.25)
    assert 0.6 < cpu_ms / host_ms < 1.6


def test_an_idle_esp32_speed_board_answers_a_raw_repl_round_trip_as_fast_as_a_full_speed_one(vboard_factory,
                                                                                            esp32_speed):
    def round_trip_ms(board) -> float:
        with socket.create_connection(("127.0.0.1", board.tcp_port), timeout=5) as sock:
            repl = RawRepl(sock, lambda: None)
            repl.enter(10)
            times = []
            for _ in range(15):
                started = time.monotonic()
                assert repl.run("pass", 10) == ("", "")
                times.append((time.monotonic() - started) * 1000)
            repl.leave()
        return statistics.median(times)

    slow = vboard_factory(**esp32_speed)
    before = slow.cpu_stats
    paced = round_trip_ms(slow)
    after = slow.cpu_stats
    full = round_trip_ms(vboard_factory())
    # what the round trips' own CPU costs at an ESP32's speed: the share of the pause that is the modelled
    # speed, not waiting. A trip is ~0.05 ms of CPU on an idle host, several times that on a loaded one.
    cpu_ms = (after.charged_cpu_s - before.charged_cpu_s) * 1000 / 15
    own_ms = (slow.cpu_speed.factor - 1) * cpu_ms
    print(f"\nraw REPL round trip: ESP32 speed {paced:.2f} ms, full speed {full:.2f} ms (medians of 15); CPU "
          f"{cpu_ms:.3f} ms a trip, {own_ms:.1f} ms at ESP32 speed")
    assert paced <= full + 3.0 + own_ms


def test_reset_power_cut_and_stop_leave_no_stopped_process_behind(vboard_factory, esp32_speed):
    board = vboard_factory(**esp32_speed)
    (board.flash_dir / "main.py").write_text(BUSY_MAIN)
    for restart in (board.reset, board.power_cut, board.reset):
        since = board.log_offset()
        restart()
        board.wait_for_log("main computing", since=since)
        wait_until_paced(board.pids[-1])
    pids = board.pids
    assert [process_state(pid) for pid in pids[:-1]] == [None] * (len(pids) - 1)  # killed while stopped: gone
    board.stop()
    assert [process_state(pid) for pid in pids] == [None] * len(pids)


def test_ctrl_c_reaches_a_paced_busy_loop(vboard_esp32):
    board = vboard_esp32
    (board.flash_dir / "main.py").write_text(BUSY_MAIN)
    board.reset()
    board.wait_for_log("main computing")
    wait_until_paced(board.pids[-1])
    since = board.log_offset()
    with socket.create_connection(("127.0.0.1", board.tcp_port)) as sock:
        sock.sendall(b"\x03")
        board.wait_for_log("KeyboardInterrupt", since=since, timeout=5)
    # the board is usable again, at the REPL main.py returned to
    assert board.exec("print(6 * 7)").strip() == "42"
    assert not board.crashes


def test_the_pacer_continues_what_it_stopped_when_it_forgets_it_or_closes():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    pacer = CpuPacer(50)
    pacer.start()
    try:
        for let_go in (lambda: pacer.forget(spinner.pid), pacer.close):
            pacer.follow(spinner.pid, ready=lambda: True)
            wait_until_paced(spinner.pid)
            let_go()
            # continued at once, not merely unpaced: no longer stopped (R, or D for a moment while the loaded
            # host pages it back in; T is stopped)
            assert process_state(spinner.pid) not in ("T", "t", None)
        assert not pacer.is_alive()
    finally:
        pacer.close()
        spinner.kill()
        spinner.wait()


def test_the_measured_factor_survives_the_sweep_of_stale_board_records(tmp_path, esp32_speed):
    """The cache sits in the runtime directory beside the board records; looking for a board (which
    removes records whose process is gone) leaves it, so the next board does not measure again."""
    cache = runtime.runtime_dir() / CACHE_NAME
    assert cache.exists()
    assert runtime.board_using_flash(tmp_path) is None
    assert runtime.board_at_url("socket://127.0.0.1:1") is None
    assert cache.exists() and cpu_speed("esp32").cached


def test_rmkit_vboard_cpu_esp32_says_so_and_sigterm_leaves_no_stopped_process(tmp_path, esp32_speed):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(runtime.runtime_dir() / CACHE_NAME, run_dir / CACHE_NAME)  # measured once per test run
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(BUSY_MAIN)
    help_text = subprocess.run([RMKIT, "vboard", "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "--cpu {esp32}" in help_text and "ESP32" in help_text
    proc = subprocess.Popen([RMKIT, "vboard", "--name", "cpubrd", "--flash", str(flash), "--cpu", "esp32",
                             "--pty", str(tmp_path / "cpubrd.pty"), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, RMKIT_RUNTIME_DIR=str(run_dir)))
    try:
        banner = ""
        while "Ctrl-C stops the board." not in banner:
            line = proc.stdout.readline()
            assert line, f"rmkit vboard exited ({proc.poll()}): {banner}{proc.stderr.read()}"
            banner += line
        assert "CPU at ESP32 speed" in banner and "ESP32 speed: CPU-bound work x" in banner
        board_pid = _only_child(proc.pid)
        wait_until_paced(board_pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    wait_until(lambda: process_state(board_pid) is None, timeout=5, what="the board's process to end")


def _only_child(pid: int) -> int:
    children = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        children.update(int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    assert len(children) == 1, children
    return children.pop()
