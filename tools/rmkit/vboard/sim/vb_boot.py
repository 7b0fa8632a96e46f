# Power-on sequence of the virtual board, run by the MicroPython unix port as its main file
# (`micropython -i vb_boot.py`), once per boot. Makes the process look like an ESP32 before any
# user code runs: simulated `network`/`machine` in sys.modules, the flash directory mounted as
# `/`, sys.path as on the ESP32 port, then boot.py and main.py like ESP32's main.c.
# The host side (rmkit.vboard) passes its settings in VBOARD_* environment variables.
# Everything here is deleted from the REPL's globals before the REPL starts.


def _vboard_power_on():
    import sys
    import os
    import vfs

    globals().pop("__file__", None)  # the ESP32's __main__ has no __file__
    sim_dir = os.getenv("VBOARD_SIM")
    sys.path[:] = [sim_dir]
    import vb_irq  # first: every module below reports to it what a BLE IRQ handler must not do
    import vb_time
    import vb_sys  # and vb_console, which puts its print() into builtins
    import vb_esp32
    import vb_machine
    import vb_network
    import vb_socket
    import vb_select
    import vb_thread
    import vb_tls
    import vb_bluetooth

    # `import network` / `import machine` look in sys.modules before the built-in table,
    # so these win over the unix port's own modules (its `machine` has no reset(), its `time`
    # counts from 1970, its sys.platform is "linux", it has no `esp32`; sockets are charged to the
    # internal-RAM model through vb_esp32, TLS sessions by the model itself, in C; time, sockets, select
    # and _thread locks report to vb_irq). The simulated modules imported the unix port's own before this.
    for name in ("time", "sys", "esp32", "machine", "network", "socket", "select", "_thread", "tls",
                 "bluetooth"):
        sys.modules[name] = sys.modules.pop("vb_" + name.lstrip("_"))

    import vb_flash  # VfsPosix plus a fix for atomic renames (see vb_flash.py)

    vfs.umount("/")
    vfs.mount(vb_flash.Flash(os.getenv("VBOARD_FLASH")), "/")
    del sys.modules["vb_flash"]
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]  # ESP32 port's default

    return os.getenv("VBOARD_BOOT")


def _vboard_ready():
    # What the GC heap holds now is the simulator's (this function and _vboard_run are all that is
    # left of this file): from here on the firmware gets an ESP32's GC heap above it (the RAM model,
    # rmkit/vboard/esp32_ram.c).
    import gc
    import os
    import vfs

    gc.collect()
    if os.getenv("VBRAM ready") != "ok":
        print("vb_boot: the RAM model (esp32_ram.so) is not preloaded into this process")
        raise SystemExit(70)
    # tell the host this boot is past setup (Ctrl-C now reaches code as KeyboardInterrupt)
    f = vfs.VfsPosix(os.getenv("VBOARD_STATE")).open("/ready", "w")
    f.write(os.getenv("VBOARD_GEN"))
    f.close()


def _vboard_run(name):
    # like pyexec_file_if_exists() on the ESP32: errors are printed, SystemExit means soft reset
    import os
    import sys

    try:
        os.stat(name)
    except OSError:
        return
    try:
        execfile(name, globals())
    except SystemExit:
        sys.modules["machine"]._vboard_exit("USR2")  # soft reboot, done by the host
    except BaseException as exc:  # noqa: B036 - KeyboardInterrupt included, as on the board
        # printed as the ESP32 prints it: without this file's frame
        import io

        text = io.StringIO()
        sys.print_exception(exc, text)
        for line in text.getvalue().split("\n"):
            if line and 'vb_boot.py"' not in line:
                print(line)


_vboard_mode = _vboard_power_on()
del _vboard_power_on
_vboard_ready()
if _vboard_mode in ("boot", "full"):
    _vboard_run("boot.py")
if _vboard_mode == "full":
    _vboard_run("main.py")
del _vboard_mode, _vboard_ready, _vboard_run
