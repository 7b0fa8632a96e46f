"""The scale benchmark (python -m rmkit.benchmarks.scale) at a small N: every mapping confirms, the
figures are there, and it leaves no process or file behind. Not timed: the numbers are the
benchmark's to show."""

import os
import tempfile
from pathlib import Path

from rmkit.benchmarks import scale


def scale_workdirs() -> set:
    return set(Path(tempfile.gettempdir()).glob("rmkit-scale-*"))


def test_twenty_nodes_and_clients_all_confirm_and_nothing_is_left_behind(monkeypatch, tmp_path):
    # its temporary files in a directory of this test's own: another run of the benchmark may be going on
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    started_processes = []
    real_load = scale.LoadProcesses

    class RecordedLoad(real_load):
        def __init__(self, jobs):
            super().__init__(jobs)
            started_processes.extend(self.pids())

    monkeypatch.setattr(scale, "LoadProcesses", RecordedLoad)
    before = scale_workdirs()
    progress = []
    row = scale.run_once(20, 2, 0.2, progress.append, http_processes=2)
    assert row["confirmed"] == 20 and row["failures"] == {}, row
    assert row["p50_s"] <= row["p99_s"] <= row["max_s"]
    assert row["raw_qos1_per_s"] > 0 and row["raw_qos1_p99_s"] > 0
    assert any("20 nodes connected over mutual TLS" in line for line in progress), progress
    assert len(started_processes) == 2
    assert not [pid for pid in started_processes if os.path.exists(f"/proc/{pid}")]
    assert scale_workdirs() == before


def test_the_table_has_a_row_per_run_under_its_header():
    row = {"nodes": 1000, "confirmed": 1000, "mappings_per_s": 600.4, "p50_s": 1.2, "p99_s": 1.51, "max_s": 1.6,
           "put_p99_s": 1.1, "cloud_cpu_pct": 110.0, "broker_cpu_pct": 20.0, "load_cpu_pct": 38.0,
           "raw_qos1_per_s": 17000.0, "raw_qos1_p99_s": 0.045, "loadavg_start": "1.00 0.90 0.80"}
    header, line = scale.table([row]).splitlines()
    assert header.split()[:3] == ["N", "confirmed", "mappings/s"]
    assert line.split()[:5] == ["1000", "1000", "600", "1.20", "1.51"]
    assert "45" in line.split()  # raw QoS 1 p99 in ms
