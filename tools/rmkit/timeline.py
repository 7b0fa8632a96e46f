"""A run's timeline: timestamped events between client, node and cloud, saved as JSON lines and drawn
as a sequence diagram (SVG) in the style of RainMaker's user-node mapping page."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path

#: the three lifelines of the mapping diagram (README), left to right
ACTORS = ("client", "node", "cloud")
ACTOR_TITLES = {"client": "Client", "node": "ESP32 node", "cloud": "Cloud"}


@dataclass
class Event:
    t: float          # seconds since the timeline started
    source: str       # one of ACTORS
    target: str       # one of ACTORS, or the same as source for a note on one lifeline
    text: str

    def line(self) -> str:
        arrow = f"{self.source} -> {self.target}" if self.target != self.source else self.source
        return f"[{self.t:7.3f} s] {arrow}: {self.text}"


class Timeline:
    """Collects events from several threads (client steps, log watchers) in arrival order."""

    def __init__(self, echo=None):
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self.events: list[Event] = []
        self._echo = echo   # called with each new event, e.g. to print progress
        self._catch_up: list = []  # callables that record what has been logged so far (rmkit.recorder.LogWatcher)

    def keep_up_with(self, catch_up) -> None:
        """`catch_up()` runs before each client event is recorded: what the node or the cloud logged before the
        client sent a request, or before it got an answer, is then drawn before that arrow, not after it (a
        watcher tailing a log would otherwise see a line a few milliseconds late)."""
        self._catch_up.append(catch_up)

    def forget(self, catch_up) -> None:
        if catch_up in self._catch_up:
            self._catch_up.remove(catch_up)

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def add(self, source: str, target: str, text: str) -> Event:
        if source not in ACTORS or target not in ACTORS:
            raise ValueError(f"unknown actor in {source!r} -> {target!r}; expected one of {ACTORS}")
        if "client" in (source, target):
            for catch_up in list(self._catch_up):
                catch_up()
        with self._lock:
            event = Event(round(self.elapsed(), 3), source, target, text)
            self.events.append(event)
        if self._echo:
            self._echo(event)
        return event

    def first(self, text_prefix: str) -> Event | None:
        with self._lock:
            return next((e for e in self.events if e.text.startswith(text_prefix)), None)

    def save(self, path: Path) -> None:
        with self._lock:
            path.write_text("".join(json.dumps(asdict(e)) + "\n" for e in self.events))

    @staticmethod
    def load(path: Path) -> list[Event]:
        return [Event(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


# --- drawing ---------------------------------------------------------------------------------

_COL_W = 300
_ROW_H = 34
_TOP = 70
_MARGIN = 40
_FONT = "font-family='Helvetica, Arial, sans-serif'"


def render_svg(events: list[Event], title: str = "User-node mapping") -> str:
    """A sequence diagram: one lifeline per actor, one arrow (or note) per event, time on the left."""
    width = _MARGIN * 2 + _COL_W * (len(ACTORS) - 1) + 120
    height = _TOP + _ROW_H * (len(events) + 1) + 40
    x = {actor: _MARGIN + 100 + i * _COL_W for i, actor in enumerate(ACTORS)}
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}'>",
        "<defs><marker id='arrow' markerWidth='10' markerHeight='8' refX='9' refY='4' orient='auto'>"
        "<path d='M0,0 L10,4 L0,8 z' fill='#333'/></marker></defs>",
        f"<rect width='{width}' height='{height}' fill='white'/>",
        f"<text x='{width / 2}' y='24' text-anchor='middle' {_FONT} font-size='16' "
        f"font-weight='bold'>{escape(title)}</text>",
    ]
    bottom = height - 30
    for actor in ACTORS:
        out.append(f"<rect x='{x[actor] - 60}' y='36' width='120' height='26' rx='4' fill='#e8f0fe' stroke='#3367d6'/>")
        out.append(f"<text x='{x[actor]}' y='54' text-anchor='middle' {_FONT} font-size='13'>"
                   f"{escape(ACTOR_TITLES[actor])}</text>")
        out.append(f"<line x1='{x[actor]}' y1='62' x2='{x[actor]}' y2='{bottom}' stroke='#999' stroke-dasharray='4,4'/>")
    for row, event in enumerate(events):
        y = _TOP + _ROW_H * (row + 1)
        out.append(f"<text x='8' y='{y + 4}' {_FONT} font-size='11' fill='#666'>{event.t:.3f} s</text>")
        label = escape(event.text if len(event.text) <= 60 else event.text[:57] + "...")
        if event.source == event.target:
            box_w = min(_COL_W - 20, 7 * len(event.text) + 12)
            # a note sits right of its lifeline, except on the last one, where it would leave the picture
            left = x[event.source] + 6 if event.source != ACTORS[-1] else x[event.source] - 6 - box_w
            out.append(f"<rect x='{left}' y='{y - 12}' width='{box_w}' height='18' "
                       "fill='#fff8c4' stroke='#c9b600'/>")
            out.append(f"<text x='{left + 6}' y='{y + 1}' {_FONT} font-size='11'>{label}</text>")
            continue
        x1, x2 = x[event.source], x[event.target]
        out.append(f"<line x1='{x1}' y1='{y}' x2='{x2}' y2='{y}' stroke='#333' marker-end='url(#arrow)'/>")
        out.append(f"<text x='{(x1 + x2) / 2}' y='{y - 5}' text-anchor='middle' {_FONT} font-size='11'>{label}</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"
