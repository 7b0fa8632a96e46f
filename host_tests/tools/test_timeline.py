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
