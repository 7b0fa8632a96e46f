"""The virtual board's task watchdog (machine.WDT) and BOOT button (machine.Pin(0)), as an ESP32 has them:

- WDT(timeout) is the ESP32 port's one watchdog user (ports/esp32/machine_wdt.c): one object per boot,
  WDT(1) and a timeout <= 0 refused, no way to stop it, kept across a soft reset and ended by any other;
  not fed in time, it panics the board with ESP-IDF's task_wdt lines, which restarts with rst:0xc and
  reset_cause() WDT_RESET;
- GPIO0 reads 1 (a DevKit's pull-up) and 0 while the host holds the button (VirtualBoard.hold_button,
  press_button, `rmkit vboard-button`); pin.irq() handlers run scheduled on the main task, on each edge.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from rmkit.vboard import runtime
from rmkit.vboard.errors import BoardError
from support.paths import VENV_BIN

MPREMOTE = VENV_BIN / "mpremote"
WDT_PANIC = (r"E \(\d+\) task_wdt: Task watchdog got triggered\. The following tasks/users did not reset the "
             r"watchdog in time:\r\nE \(\d+\) task_wdt:  - mpy_machine_wdt \(CPU 0/1\)\r\n"
             r"E \(\d+\) task_wdt: Aborting\.\r\nRebooting\.\.\.\r\n"
             r"rst:0xc \(SW_CPU_RESET\),boot:0x13 \(SPI_FAST_FLASH_BOOT\)\r\n")
WDT_RESET = "3"  # machine.WDT_RESET on the ESP32 port


def wait_on_board(board, condition: str, then: str, timeout_ms: int = 5000) -> str:
    """Run `then` on the board once `condition` (an expression over its globals) holds, polling there every
    10 ms for at most timeout_ms; what `then` printed."""
    return board.exec(f"import time\nfor _ in range({timeout_ms // 10}):\n    if {condition}:\n        break\n"
                      f"    time.sleep_ms(10)\n{then}", timeout=timeout_ms / 1000 + 10).strip()


def test_a_fed_watchdog_keeps_the_board_running_and_a_starved_one_resets_it_as_an_esp32(vboard):
    assert vboard.exec("import machine\nwdt = machine.WDT(timeout=1500)\nprint(wdt is machine.WDT(timeout=1500))"
                       ).strip() == "True"  # one watchdog per boot: the same object, its timeout reconfigured
    # fed every 100 ms for twice its timeout: nothing happens
    assert vboard.exec("import time\nfor _ in range(30):\n    wdt.feed()\n    time.sleep_ms(100)\nprint('fed')"
                       ).strip() == "fed"
    assert vboard.watchdog_resets == 0
    since = vboard.log_offset()
    with pytest.raises(BoardError, match="rebooted while running the code"):
        vboard.exec("while True:\n    pass", timeout=20)  # a hang: the loop never feeds
    vboard.wait_for_log(WDT_PANIC, since=since)
    assert vboard.watchdog_resets == 1
    assert vboard.exec("import machine\nprint(machine.reset_cause())").strip() == WDT_RESET
    assert not (vboard.state_dir / "wdt").exists()  # the chip reset ended it


def test_the_watchdog_takes_the_ports_arguments_only(vboard):
    out = vboard.exec("import machine\n"
                      "for args in ({'id': 1}, {'timeout': 0}, {'timeout': -5}):\n"
                      "    try:\n        machine.WDT(**args)\n    except ValueError as e:\n"
                      "        print('refused', args, e)\n"
                      "print(hasattr(machine.WDT(timeout=60000), 'deinit'))")
    assert out.splitlines() == ["refused {'id': 1} ", "refused {'timeout': 0} WDT timeout too short",
                                "refused {'timeout': -5} WDT timeout too short", "False"]


def test_a_soft_reset_keeps_the_watchdog_running_and_a_hard_reset_ends_it(vboard):
    # 6 s: mpremote's whole session (start-up, soft reset, exec, leaving) must end before the watchdog fires; on
    # a loaded machine it took over 2 s, the panic came mid-session and mpremote's leaving soft-reset the board again
    vboard.exec("import machine\nmachine.WDT(timeout=6000)")
    # mpremote soft-resets into the raw REPL (boot.py only): the watchdog still runs and nobody feeds it
    since = vboard.log_offset()
    out = subprocess.run([str(MPREMOTE), "connect", vboard.url, "exec", "print('soft')"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "soft" in out.stdout, out.stderr
    session_end = vboard.log_offset()
    vboard.wait_for_log(r"MPY: soft reboot", since=since)
    vboard.wait_for_log(WDT_PANIC, since=session_end, timeout=15)
    assert vboard.exec("import machine\nprint(machine.reset_cause())").strip() == WDT_RESET

    vboard.exec("import machine\nmachine.WDT(timeout=2000)")
    assert (vboard.state_dir / "wdt").exists()
    vboard.reset()  # machine.reset(): a chip reset, the watchdog's timer stops with it
    assert not (vboard.state_dir / "wdt").exists()
    assert vboard.exec("import machine\nprint(machine.reset_cause())").strip() == "2"  # HARD_RESET
    assert vboard.watchdog_resets == 1


def test_the_boot_button_pulls_gpio0_low_and_raises_the_pin_irq_on_each_edge(vboard):
    assert vboard.exec("import machine\npin = machine.Pin(0, machine.Pin.IN, machine.Pin.PULL_UP)\nedges = []\n"
                       "pin.irq(lambda p: edges.append((p is pin, p.value())), machine.Pin.IRQ_FALLING | "
                       "machine.Pin.IRQ_RISING)\nprint(pin.value())").strip() == "1"
    vboard.hold_button()
    assert wait_on_board(vboard, "edges", "print(edges, pin.value())") == "[(True, 0)] 0"
    vboard.release_button()
    assert wait_on_board(vboard, "len(edges) > 1", "print(edges, pin.value())") == "[(True, 0), (True, 1)] 1"
    # only the edges asked for (a handler runs when the board runs code: it is idle at the REPL meanwhile)
    vboard.exec("falls = []\npin.irq(lambda p: falls.append(p is pin), machine.Pin.IRQ_FALLING)")
    vboard.press_button(0.1)
    assert wait_on_board(vboard, "falls and pin.value()", "print(falls)") == "[True]"


def test_a_board_that_boots_with_the_button_held_reads_gpio0_low(vboard):
    vboard.hold_button()
    vboard.reset()
    assert vboard.exec("import machine\nprint(machine.Pin(0, machine.Pin.IN).value())").strip() == "0"
    vboard.release_button()
    assert wait_on_board(vboard, "machine.Pin(0).value()", "print('released')") == "released"


def test_rmkit_vboard_button_presses_a_running_boards_button(vboard, tmp_path, monkeypatch):
    env = dict(os.environ, RMKIT_RUNTIME_DIR=str(tmp_path / "run"))
    monkeypatch.setenv("RMKIT_RUNTIME_DIR", env["RMKIT_RUNTIME_DIR"])
    runtime.record_board(vboard)  # as `rmkit vboard` and `rmkit sandbox` record theirs
    vboard.exec("import machine\npin = machine.Pin(0)\nedges = []\npin.irq(lambda p: edges.append(p is pin))")
    out = subprocess.run([str(VENV_BIN / "rmkit"), "vboard-button", "--name", vboard.name, "--hold", "0.3"],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    assert "BOOT button held for 0.3 s" in out.stdout and "released" in out.stdout
    assert wait_on_board(vboard, "len(edges) > 1", "print(edges)") == "[True, True]"  # pressed, released
    unknown = subprocess.run([str(VENV_BIN / "rmkit"), "vboard-button", "--name", "nosuchboard"],
                             capture_output=True, text=True, timeout=30, env=env)
    assert unknown.returncode != 0 and "no virtual board named 'nosuchboard' is running" in unknown.stderr
