"""The dashboard in a real browser: `ecoserve serve` over stand-in engine processes,
headless Chromium (Debian's package, ``ecoserve.testing.browser``) loading
``/ecoserve/dashboard``. The key is refused or accepted the way a user types it;
lanes, phases and SLO lines are read back from the page's DOM."""

from __future__ import annotations

import io
import threading

import httpx
import pytest

from ecoserve.testing.browser import Browser

KEY = "dash-key"


def _submit_key(b: Browser, key: str) -> None:
    b.eval(f"document.getElementById('key').value = {key!r}; document.getElementById('auth-form').requestSubmit(); true")


def _lane_phases(b: Browser) -> dict[str, list[str]]:
    return b.eval("""Object.fromEntries([...document.querySelectorAll('.lane')].map(l =>
        [l.dataset.engine, [...l.querySelectorAll('.phase')].map(p => p.dataset.phase)]))""")


def _send(url: str, model: str, n: int) -> threading.Thread:
    def run() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            for _ in range(n):
                c.post("/v1/completions", json={"model": model, "prompt": "w " * 64, "max_tokens": 24})

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.fixture
def served(start_fake_engine, start_serve, tmp_path):
    fakes = [start_fake_engine(token_interval=0.02, prefill_delay=0.1, decode_steps=True) for _ in range(2)]
    args = [a for f in fakes for a in ("--engine-url", f.url)]
    serve = start_serve([*args, "--api-key", KEY, "--slo-ttft", "3", "--slo-tpot", "0.5"], tmp_path)
    try:
        serve.wait_ready(60)
        yield serve
    finally:
        serve.kill()
        for f in fakes:
            f.stop()


def test_dashboard_refuses_without_the_key_then_draws_every_engine_live(served, tmp_path):
    with Browser() as b:
        b.goto(served.url + "/ecoserve/dashboard")
        b.wait_for("window.ecoserveDashboard && window.ecoserveDashboard.state === 'refused'")
        assert b.eval("document.getElementById('auth').hidden") is False
        assert b.eval("document.getElementById('auth-msg').textContent").startswith("This server needs its API key")
        assert b.eval("document.querySelectorAll('.lane, .seg, .chart').length") == 0

        _submit_key(b, "not-the-key")
        b.wait_for("document.getElementById('auth-msg').textContent.includes('refused this key')")
        assert b.eval("window.ecoserveDashboard.state") == "refused"
        assert b.eval("document.querySelectorAll('.lane, .seg, .chart').length") == 0
        assert b.eval("sessionStorage.getItem('ecoserve-api-key')") is None  # a refused key is not kept
        b.eval("new Promise(r => setTimeout(r, 1500))")  # the page's 1 s redraw must not draw under the form
        assert b.eval("document.querySelectorAll('.lane, .seg, .chart').length") == 0

        _submit_key(b, KEY)
        b.wait_for("window.ecoserveDashboard.state === 'live' && document.querySelectorAll('.lane').length === 2")
        # The key never goes into a URL: not the page's, not any it fetched.
        urls = b.eval("[location.href, ...performance.getEntriesByType('resource').map(e => e.name)]")
        assert any("timeline/stream" in u for u in urls) and not any(KEY in u for u in urls), urls
        lanes = b.eval("[...document.querySelectorAll('.lane')].map(l => l.dataset.engine)")
        assert sorted(lanes) == ["engine-0", "engine-1"]
        assert b.eval("document.querySelectorAll('.slo-line[data-slo=ttft]').length") == 1
        assert b.eval("document.querySelectorAll('.slo-line[data-slo=tpot]').length") == 1
        before = _lane_phases(b)

        model = httpx.get(served.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]["id"]
        senders = [_send(served.url, model, 4) for _ in range(3)]
        # Requests are routed (marks), engines prefill and decode (segments), and
        # the policy's phase commands move the lanes' phase strips.
        b.wait_for("document.querySelectorAll('.seg[data-kind=prefill]').length > 0", timeout=60)
        b.wait_for("document.querySelectorAll('.seg[data-kind=decode]').length > 0", timeout=60)
        b.wait_for("document.querySelectorAll('.mark').length >= 3", timeout=60)
        for t in senders:
            t.join(120)
        b.wait_for("document.getElementById('summary').textContent.startsWith('12 finished')", timeout=30)
        assert b.eval("document.querySelectorAll('.dot').length") == 24  # every request's TTFT and TPOT
        after = _lane_phases(b)
        assert after != before
        # A lane's strip shows a prefill window, then the phase it rests in after it.
        assert any("prefill" in ps and ps.index("prefill") < len(ps) - 1 for ps in after.values()), after

        png = b.screenshot()
        (tmp_path / "dashboard.png").write_bytes(png)
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert img.size[0] >= 1000
    colors = img.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 20, "the screenshot is (nearly) blank"
    white = max((n for n, c in colors if c == (255, 255, 255)), default=0)
    assert white < 0.97 * img.size[0] * img.size[1]


def test_docs_render_without_internet(served):
    """/docs draws the API from the package's own Swagger UI: the browser
    fetches nothing from another host (a CDN would leave the page blank here)."""
    with Browser() as b:
        b.call("Network.enable")
        b.goto(served.url + "/docs")
        n = b.wait_for("document.querySelectorAll('.opblock').length", timeout=30)
        assert n >= 5  # the OpenAI routes, status, admin, dashboard ...
        assert b.eval("document.querySelector('.title').textContent").startswith("EcoServe")
        hosts = b.eval("[...new Set(performance.getEntriesByType('resource').map(e => new URL(e.name).host))]")
        assert hosts == [served.url.removeprefix("http://")], hosts
