"""The run timeline and its sequence-diagram picture."""

import xml.etree.ElementTree as ET

import pytest

from rmkit.timeline import Timeline, render_svg

SVG = "{http://www.w3.org/2000/svg}"


def test_events_keep_order_and_survive_a_round_trip(tmp_path):
    timeline = Timeline()
    timeline.add("client", "node", "cloud_user_assoc {user_id, secret_key}")
    timeline.add("node", "client", "node_id N1")
    timeline.add("node", "node", "joined Wi-Fi")
    path = tmp_path / "timeline.jsonl"
    timeline.save(path)
    loaded = Timeline.load(path)
    assert [e.text for e in loaded] == ["cloud_user_assoc {user_id, secret_key}", "node_id N1", "joined Wi-Fi"]
    assert loaded[0].t <= loaded[1].t <= loaded[2].t
    assert timeline.first("node_id").source == "node"


def test_unknown_actor_is_refused():
    with pytest.raises(ValueError, match="phone"):
        Timeline().add("phone", "node", "hello")


def test_svg_draws_one_arrow_per_message_and_a_note_per_local_event():
    timeline = Timeline()
    timeline.add("client", "cloud", "PUT user/nodes/mapping")
    timeline.add("cloud", "client", "request_id <R&1>")
    timeline.add("node", "node", "joined Wi-Fi")
    root = ET.fromstring(render_svg(timeline.events))
    arrows = [line for line in root.iter(SVG + "line") if line.get("marker-end")]
    assert len(arrows) == 2
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "request_id <R&1>" in texts          # escaped in the file, intact once parsed
    assert "joined Wi-Fi" in texts
    assert {"Client", "ESP32 node", "Cloud"} <= set(texts)


def test_what_was_logged_before_a_client_event_is_drawn_before_it(tmp_path):
    # the cloud logs its decision before it answers; the watcher tails the log every few milliseconds, so
    # without catching up the answer's arrow would come first (seen in make demo's picture)
    from rmkit.recorder import CLOUD_PATTERNS, LogWatcher

    log = tmp_path / "cloud.log"
    log.write_text("")
    timeline = Timeline()
    watcher = LogWatcher(log, timeline, CLOUD_PATTERNS)
    watcher._run = lambda: None  # no polling thread: only the catch-up can see the line
    watcher.start()
    try:
        timeline.add("client", "cloud", "POST user/nodes/mapping/verify {signature}")
        with open(log, "a") as f:
            f.write("INFO rmkit.cloud.mapping: mapping r1: node N1 user U1 -> confirmed (challenge response verified)\n")
        timeline.add("cloud", "client", "success: node mapped")
    finally:
        watcher.stop()
    assert [event.text for event in timeline.events] == [
        "POST user/nodes/mapping/verify {signature}", "signature verified with the node's certificate: confirmed",
        "success: node mapped"]
