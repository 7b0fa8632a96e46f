"""Runs the firmware unit tests in this folder and prints one line per test:
`PASS <module>::<test>` or `FAIL <module>::<test>: <error>`, then `DONE <passed> <failed>`.

Usage (MicroPython unix port, or CPython): run_unit.py [module ...]
sys.path must hold firmware/ and this folder (MICROPYPATH / PYTHONPATH).
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


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:]) else 0)
