# Simulated `sys` for the virtual board: the unix port's sys module (the same path list, modules
# dict and stdin) with what an ESP32 reports: sys.platform "esp32". The host may also make the
# board report another MicroPython version (VBOARD_MPY_VERSION, "1.23.0"), to test tools that
# check the version a board runs. Its stdout and stderr are vb_console's, which see what a BLE IRQ
# handler writes to the console.
# Installed as sys.modules["sys"] by vb_boot.py.
from sys import *  # noqa: F401,F403 - path, modules, stdin/stdout/stderr, exit, print_exception, ...
import sys as _unix

import vb_console

platform = "esp32"
stdout = vb_console.stdout
stderr = vb_console.stderr


def __getattr__(name):
    # sys.path, sys.argv, sys.ps1, ... live in the VM state, not in the module's dict, so
    # `import *` does not copy them: read them from the real module (the same list objects)
    return getattr(_unix, name)


def _implementation():
    import os
    wanted = os.getenv("VBOARD_MPY_VERSION")
    impl = _unix.implementation
    if not wanted:
        return impl
    from collections import namedtuple
    version = tuple(int(part) for part in wanted.split(".")[:3]) + ("",)
    fields = namedtuple("implementation", ("name", "version", "_machine", "_mpy"))
    return fields(impl.name, version, impl._machine, impl._mpy)


implementation = _implementation()
del _implementation
__name__ = "sys"
