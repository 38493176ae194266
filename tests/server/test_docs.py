"""``/docs`` loads nothing from outside the server (ecoserve/server/docs.py).

The page's every script and stylesheet is a local path, each answers 200 with
the right content type and a real body, without the API key, and the schema the
page reads still works. In process (httpx.ASGITransport) over one stand-in engine.
"""

from __future__ import annotations

import contextlib
import re

import httpx

from ecoserve.live.coordinator import Coordinator
from ecoserve.server.app import create_app
from tests.live.helpers import fakes

KEY = "sekrit"


@contextlib.asynccontextmanager
async def client(**app_kw):
    async with fakes(1) as (engine,):
        async with Coordinator(engine_urls=[engine.url]) as coord:
            transport = httpx.ASGITransport(app=create_app(coord, **app_kw))
            async with httpx.AsyncClient(transport=transport, base_url="http://ecoserve", timeout=30) as c:
                yield c


def asset_urls(html: str) -> list[str]:
    return re.findall(r'<script[^>]*\ssrc="([^"]*)"', html) + re.findall(r'<link[^>]*\shref="([^"]*)"', html)


async def test_docs_page_and_assets_are_local_and_open():
    async with client(api_key=KEY) as c:
        page = await c.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        urls = asset_urls(page.text)
        assert len(urls) == 3, urls  # the bundle, the stylesheet, the favicon
        assert not re.search(r"(https?:)?//", page.text.replace("window.location.origin", "")), page.text
        expected = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
        for url in urls:
            assert url.startswith("/static/swagger-ui/"), url
            r = await c.get(url)  # no Authorization header: the docs need no key
            assert r.status_code == 200, url
            kind = expected[url[url.rindex(".") :]]
            assert kind in r.headers["content-type"], (url, r.headers["content-type"])
            assert len(r.content) > (100_000 if kind != "image/png" else 200), (url, len(r.content))
        assert "SwaggerUIBundle" in (await c.get("/static/swagger-ui/swagger-ui-bundle.js")).text
        schema = await c.get("/openapi.json")
        assert schema.status_code == 200 and "/v1/completions" in schema.json()["paths"]
        assert not any(p.startswith(("/docs", "/static")) for p in schema.json()["paths"])
        assert (await c.get("/v1/models")).status_code == 401  # the key still guards the API


async def test_oauth2_redirect_redoc_gone_and_root_path():
    async with client() as c:
        redirect = await c.get("/docs/oauth2-redirect")
        assert redirect.status_code == 200 and "swaggerUIRedirectOauth2" in redirect.text
        assert (await c.get("/redoc")).status_code == 404  # dropped: it would load from a CDN
        assert (await c.get("/static/swagger-ui/nope.js")).status_code == 404
        assert (await c.get("/static/swagger-ui/../docs.py")).status_code == 404
    # Behind a proxy that strips a prefix (root_path), the page points through it, as FastAPI's own does.
    async with fakes(1) as (engine,):
        async with Coordinator(engine_urls=[engine.url]) as coord:
            transport = httpx.ASGITransport(app=create_app(coord), root_path="/api")
            async with httpx.AsyncClient(transport=transport, base_url="http://ecoserve") as c:
                html = (await c.get("/api/docs")).text
                assert all(u.startswith("/api/static/swagger-ui/") for u in asset_urls(html)), html
                assert "'/api/openapi.json'" in html and "/api/docs/oauth2-redirect" in html
