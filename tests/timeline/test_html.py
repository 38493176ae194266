"""A timeline as a file: the self-contained page (in a real browser), PNG, JSON."""

from __future__ import annotations

import json
import re

import pytest

from ecoserve.testing.browser import Browser
from ecoserve.timeline import TimelineRecorder, decode
from ecoserve.timeline.document import Event, Macro
from ecoserve.timeline.html import page, write


def _doc(title: str = "a run"):
    r = TimelineRecorder(slo_ttft=2.0, slo_tpot=0.1)
    r.phase("e0", "prefill", 0.0)
    r.steps("e0", [(0.0, 1.0, "prefill", 512), (1.0, 4.0, "decode", 0)])
    r.phase("e0", "decode", 1.0)
    r.steps("e1", [(0.5, 2.0, "decode", 0), (3.0, 3.5, "mixed", 64)])
    r.routed("e0", 0.0)
    r.finished(4.0, 1.0, 0.05)
    r.finished(4.5, 3.0, 0.2)  # misses both
    r.sample(2.0, 1, 2, {"e0": (0.25, "serving"), "e1": (0.5, "draining")},
             [Macro("m0", ["e0"]), Macro("m1", ["e1"])], [Event(2.5, "drained", "e1")])  # fmt: skip
    doc = r.document(5.0, title=title)
    doc.source = "simulated"
    return doc


def test_the_page_is_self_contained_and_its_data_cannot_break_out():
    html = page(_doc(title="</script><script>alert(1)</script>"))
    assert not re.search(r"<(script|link)[^>]+(src|href)=", html)  # nothing fetched: no CDN, no other file
    assert html.count("</script>") == 3  # config, data, code: the title did not close one
    data = re.search(r'<script type="application/json" id="timeline-data">(.*?)</script>', html, re.S).group(1)
    assert json.loads(data)["title"] == "</script><script>alert(1)</script>"
    with pytest.raises(ValueError):
        page(None)


def test_written_by_suffix(tmp_path):
    doc = _doc()
    assert decode(write(doc, tmp_path / "t.json").read_bytes()) == doc
    png = write(doc, tmp_path / "t.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    with pytest.raises(ValueError, match="html, .png or .json"):
        write(doc, tmp_path / "t.svg")


def test_the_offline_page_draws_in_a_browser(tmp_path):
    path = write(_doc(), tmp_path / "t.html")
    with Browser() as b:
        b.goto(path.as_uri())
        b.wait_for("window.ecoserveDashboard && window.ecoserveDashboard.renders > 0")
        assert b.eval("window.ecoserveDashboard.state") == "offline"
        groups = b.eval("[...document.querySelectorAll('.lanes .group')].map(g => g.textContent)")
        assert groups == ["m0", "m1"]
        segs = b.eval("[...document.querySelectorAll('.seg')].map(s => s.dataset.engine + ':' + s.dataset.kind)")
        assert sorted(segs) == ["e0:decode", "e0:prefill", "e1:decode", "e1:mixed"]
        assert b.eval("[...document.querySelectorAll('.phase')].map(p => p.dataset.phase)") == ["prefill", "decode"]
        assert b.eval("document.querySelectorAll('.state[data-state=draining]').length") == 1
        assert b.eval("[...document.querySelectorAll('.event')].map(e => e.dataset.event)") == ["drained"]
        assert b.eval("document.querySelectorAll('.slo-line').length") == 2
        assert b.eval("document.getElementById('summary').textContent").startswith("2 finished, 50% within both SLOs")
        assert b.eval("getComputedStyle(document.querySelector('.live-only')).display") == "none"
