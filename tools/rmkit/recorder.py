"""Turn what the node and the cloud log into timeline events, as the lines arrive.

A LogWatcher tails one log file (a board's serial log, the cloud log) in a thread and adds an
event to the Timeline for every line that matches one of its patterns. Only events are recorded,
never whole lines, so nothing secret can reach the picture.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

from rmkit.timeline import Timeline

# (regex, source, target, text or a function of the match giving the text)
Pattern = Tuple[str, str, str, Union[str, Callable[[re.Match], str]]]

NODE_PATTERNS: Sequence[Pattern] = (
    (r"prov: pending mapping for user \S+ stored", "node", "node", "pending mapping stored on flash"),
    (r"node: state: connecting", "node", "node", "joining Wi-Fi"),
    (r"node: joined \S+; credentials stored", "node", "node", "joined Wi-Fi, credentials stored"),
    (r"node: provisioning stopped", "node", "node", "provisioning service stopped (access point / BLE off)"),
    (r"node: provisioned; rebooting", "node", "node", "reboots into station mode (fresh heap for TLS)"),
    (r"mqtt: connected in (\d+) ms", "node", "cloud", lambda m: f"MQTT connected (mutual TLS, {m.group(1)} ms)"),
    (r"mqtt: published \S+/user/mapping", "node", "cloud", "MQTT user/mapping {node_id, user_id, secret_key}"),
    (r"mapping: mapping for user \S+ acknowledged", "cloud", "node", "PUBACK: pending mapping cleared"),
    (r"online: factory reset reported", "node", "cloud", "MQTT reset mapping (factory reset)"),
)

CLOUD_PATTERNS: Sequence[Pattern] = (
    (r"mapping \S+: node \S+ user \S+ -> confirmed \(challenge response verified\)", "cloud", "cloud",
     "signature verified with the node's certificate: confirmed"),
    (r"mapping \S+: node \S+ user \S+ -> confirmed(?! \(challenge response verified\))", "cloud", "cloud",
     "both sides match: confirmed"),
    (r"mapping \S+: node \S+ user \S+ -> timedout", "cloud", "cloud", "no match within the timeout: timedout"),
    (r"node \S+ reset: associations", "cloud", "cloud", "node reset: old associations removed"),
)


class LogWatcher:
    def __init__(self, path: Path, timeline: Timeline, patterns: Sequence[Pattern], start_at_end: bool = True):
        self.path = Path(path)
        self.timeline = timeline
        self.patterns = [(re.compile(rx), src, dst, text) for rx, src, dst, text in patterns]
        self._offset = self.path.stat().st_size if start_at_end and self.path.exists() else 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._partial = ""
        self._reading = threading.Lock()  # the watcher's thread and the timeline's catch-up read in turn

    def start(self) -> "LogWatcher":
        self._thread = threading.Thread(target=self._run, name=f"watch {self.path.name}", daemon=True)
        self._thread.start()
        self.timeline.keep_up_with(self._poll)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.timeline.forget(self._poll)
        if self._thread is not None:
            self._thread.join(2)
        self._poll()  # whatever arrived last

    def _run(self) -> None:
        while not self._stop.wait(0.005):  # client steps are milliseconds apart
            self._poll()

    def _poll(self) -> None:
        with self._reading:
            self._read_new_lines()

    def _read_new_lines(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        if not chunk:
            return
        self._offset += len(chunk)
        text = self._partial + chunk.decode(errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            for regex, source, target, label in self.patterns:
                match = regex.search(line)
                if match:
                    self.timeline.add(source, target, label(match) if callable(label) else label)
                    break
