"""The modules in this folder are run by host_tests/test_fw_unit.py (under CPython and under the
MicroPython unix port), not collected by pytest directly."""

collect_ignore_glob = ["*.py"]
