"""The dashboard's routes (ecoserve/server/dashboard.py), in process over a
stand-in engine: the page is open and holds no data, the data needs the key,
bad parameters are 400s, deltas do not repeat, streams end."""

from __future__ import annotations

import contextlib
import json

import httpx
import pytest

from ecoserve.live.coordinator import Coordinator
from ecoserve.server import dashboard
from ecoserve.server.app import create_app
from ecoserve.timeline import decode
from tests.live.helpers import fakes

KEY = "dash"
AUTH = {"Authorization": f"Bearer {KEY}"}


@contextlib.asynccontextmanager
async def served():
    async with fakes(1, prefill_delay=0.01) as (engine,):
        async with Coordinator(engine_urls=[engine.url]) as coord:
            app = create_app(coord, api_key=KEY)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ecoserve", timeout=30) as c:
                yield c, app, coord


async def test_the_page_is_open_and_holds_no_data():
    async with served() as (c, _, _):
        r = await c.get("/ecoserve/dashboard")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert '<script type="application/json" id="timeline-data">null</script>' in r.text
        assert json.loads(r.text.split('id="timeline-config">')[1].split("</script>")[0]) == {"live": True, "base": ""}


async def test_the_data_needs_the_key_and_bad_parameters_are_400s():
    async with served() as (c, _, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            for route in ("/ecoserve/timeline", "/ecoserve/timeline/stream"):
                r = await c.get(route, headers=headers)
                assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
        for query in ("after=-1", "after=x", "since=abc", "since=-5", "since=inf", "since=nan", "since=1e300"):
            r = await c.get(f"/ecoserve/timeline?{query}", headers=AUTH)
            assert r.status_code == 400, (query, r.status_code, r.text)
            assert r.json()["error"]["message"]


async def test_documents_carry_what_happened_once():
    async with served() as (c, _, coord):
        ok = await c.post("/v1/completions", headers=AUTH, json={"model": coord.served_model, "prompt": "a b c",
                                                                 "max_tokens": 4})  # fmt: skip
        assert ok.status_code == 200
        refused = await c.post("/v1/completions", headers=AUTH, json={"model": "nope", "prompt": "a", "max_tokens": 2})
        assert refused.status_code == 404
        first = decode((await c.get("/ecoserve/timeline", headers=AUTH)).content)
        assert [m.engine for m in first.marks] == ["engine-0"]
        assert len(first.latencies) == 1 and first.latencies[0].ttft is not None  # the 404 drew no latency
        assert first.macros and first.samples and {p.engine for p in first.phases} == {"engine-0"}
        again = decode((await c.get(f"/ecoserve/timeline?after={first.seq}", headers=AUTH)).content)
        assert again.marks == [] and again.latencies == [] and again.seq >= first.seq
        later = decode((await c.get(f"/ecoserve/timeline?since={first.end + 1}", headers=AUTH)).content)
        assert later.marks == [] and later.start == first.end + 1


async def test_the_stream_sends_deltas_and_ends(monkeypatch):
    monkeypatch.setattr(dashboard, "STREAM_S", 1.2)
    async with served() as (c, app, coord):
        await c.post("/v1/completions", headers=AUTH, json={"model": coord.served_model, "prompt": "a", "max_tokens": 2})
        r = await c.get("/ecoserve/timeline/stream", headers=AUTH)  # ends by itself after STREAM_S
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in r.text.split("\n\n") if f]
        assert len(frames) >= 2 and all(f.startswith("data: ") for f in frames)
        docs = [decode(f[len("data: "):]) for f in frames]
        assert len(docs[0].marks) == 1 and all(d.marks == [] for d in docs[1:])  # each thing once
        app.state.stopping = True
        r = await c.get("/ecoserve/timeline/stream", headers=AUTH)
        assert r.status_code == 200 and r.text == ""  # a stopping server ends streams at once


@pytest.mark.parametrize("title", ["</script><script>alert(1)</script>", "a <!-- b <script> c"])
def test_embedded_text_keeps_the_page_valid(title):
    from ecoserve.timeline import TimelineRecorder
    from ecoserve.timeline.html import page

    html = page(TimelineRecorder(slo_ttft=1, slo_tpot=1).document(1.0, title=title))
    data = html.split('id="timeline-data">')[1].split("</script>")[0]
    assert json.loads(data)["title"] == title and "<" not in data
