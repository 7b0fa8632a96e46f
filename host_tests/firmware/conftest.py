"""Firmware tests run the node's code in this process too: firmware/, the CPython stand-ins for
MicroPython modules and the unit tests' helpers (fwtest; sec1_client and esp32_stack from
tools/rmkit/benchmarks) go on sys.path here, for this folder only."""

from support import paths

paths.use_firmware(unit_helpers=True)
