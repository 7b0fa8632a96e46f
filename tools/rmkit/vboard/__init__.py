"""Virtual ESP32 boards: the MicroPython unix port made to look like an ESP32 on a serial port.

    from rmkit.vboard import VirtualBoard, BoardError
    with VirtualBoard(name="vb1", flash_dir=tmp / "flash", air=tmp / "air.json") as board:
        board.url              # "socket://127.0.0.1:PORT" for mpremote / pyserial
        board.pty_link         # symlink to the board's pty (mpremote and ampy)
        board.exec("import network; print(network.WLAN().config('mac'))")
        board.wait_for_log(r"rmnode starting")
        board.reset(); board.power_cut()

What a board is:
- a MicroPython process (unix port, `-X heapsize`) restarted at every reboot while its pty and
  TCP port stay; see supervisor.py for how soft reset, machine.reset() and Ctrl-C map to that;
- its flash directory mounted as `/` (persists across resets; a new directory = an erased board),
  sys.path ['', '.frozen', '/lib'] as on the ESP32 port, boot.py then main.py run at power-on and
  after every reset (after a soft reset from the raw REPL only boot.py, as on the ESP32);
- its own MAC (default: derived from the name, under Espressif's OUI 24:0a:c4), reported by
  network.WLAN(...).config('mac') and machine.unique_id();
- simulated `network` and `machine` modules (sim/, never in firmware/), `network` driven by the
  air file (schema in sim/vb_network.py), `machine.WDT` a task watchdog whose timer the supervisor keeps
  (not fed in time, the board resets as an ESP32's does; board.watchdog_resets), `machine.Pin(0)` the
  BOOT button the host presses (board.hold_button(), release_button(), press_button(seconds));
- a serial log with everything the board printed, written even when no client is attached;
- faults: what firmware did that an ESP32 would not survive (a BLE IRQ handler releasing the GIL),
  printed as `vboard FAULT: ...` lines, listed in board.faults and raised as BoardFault by
  exec() and wait_for_log(); the board carries on.

The SoftAP address: a real ESP32's firmware serves provisioning on 192.168.4.1:80 (the SoftAP
default). A virtual board cannot own that address, so `softap="HOST:PORT"` (default 127.0.0.1 and
a free port) makes network.WLAN(network.AP_IF).ifconfig() report HOST, and the board writes
{"prov_port": PORT} into /settings.json on its flash (other keys kept) before power-on, so the
firmware binds (ap_ip, prov_port) without knowing it is simulated.

Heap: by default firmware gets an ESP32's GC heap, 56 KiB at boot growing into ESP-IDF's heap as on
ESP32_GENERIC (esp32_ram.c models both; 64-bit bytes = board bytes x HEAP_RATIO); `heap="110K"` gives it a
fixed heap of that many 64-bit bytes instead. The process has SIM_HEAP_ALLOWANCE more, taken by the
simulated modules (C in ROM on a real board).
"""

from rmkit.vboard.air import AirError, load_air
from rmkit.vboard.board import VirtualBoard, mac_for_name, parse_heap
from rmkit.vboard.errors import BoardCrashed, BoardError, BoardFault

__all__ = ["VirtualBoard", "BoardError", "BoardCrashed", "BoardFault", "AirError", "load_air", "mac_for_name",
           "parse_heap"]
