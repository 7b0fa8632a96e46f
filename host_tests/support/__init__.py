"""Support code of the host tests, not tests themselves (pytest collects nothing here).

- paths.py             every repository path and venv program the tests use (the one place that knows REPO_ROOT)
- fixtures_*.py        pytest plugins, one per area (loaded by host_tests/conftest.py), also imported for helpers
- launch_*.py          scripts the tests start as processes (under CPython and/or the MicroPython unix port);
                       the online node's launcher is shared with `rmkit bench`: tools/rmkit/benchmarks/launch_mqtt_node.py
- node_process.py      NodeProcess, the one wrapper of a process a test started; wait.py: wait_until
- mpy_stubs/           CPython stand-ins for MicroPython modules (cryptolib), on sys.path only where firmware
                       code runs under CPython (paths.use_firmware())
"""
