"""Runs the firmware unit tests in this folder and prints one line per test:
`PASS <module>::<test>` or `FAIL <module>::<test>: <error>`, then `DONE <passed> <failed>`.

Usage (MicroPython unix port, or CPython): run_unit.py [module ...]
sys.path must hold firmware/, this folder and tools/rmkit/benchmarks (esp32_stack, sec1_client) (MICROPYPATH /
PYTHONPATH); under CPython also host_tests/support/mpy_stubs (cryptolib).
"""

import os
import sys


def _modules(names):
    if names:
        return names
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    return sorted(n[:-3] for n in os.listdir(here) if n.startswith("test_") and n.endswith(".py"))


def main(names):
    passed = failed = 0
    for module_name in _modules(names):
        try:
            module = __import__(module_name)
        except Exception as e:
            print("FAIL %s::<import>: %s: %s" % (module_name, type(e).__name__, e))
            failed += 1
            continue
        for name in sorted(dir(module)):
            fn = getattr(module, name)
            if not name.startswith("test_") or not callable(fn):
                continue
            try:
                fn()
            except Exception as e:
                print("FAIL %s::%s: %s: %s" % (module_name, name, type(e).__name__, e))
                failed += 1
            else:
                print("PASS %s::%s" % (module_name, name))
                passed += 1
    print("DONE %d %d" % (passed, failed))
    return failed


def main_on_an_esp32_sized_stack(names):
    import esp32_stack

    # Import (= compile) the test modules and the firmware on the main thread: on a board the
    # firmware arrives as .mpy, so the compiler's deep recursion never runs there.
    for module_name in _modules(names) + (["vb_network"] if os.getenv("VBOARD_MAC") else []):
        try:
            __import__(module_name)
        except Exception:
            pass  # main() imports it again and reports the error
    return esp32_stack.run(main, names)


if __name__ == "__main__":
    on_micropython = sys.implementation.name == "micropython"
    sys.exit(1 if (main_on_an_esp32_sized_stack if on_micropython else main)(sys.argv[1:]) else 0)
