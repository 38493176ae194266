"""The interactive API docs (``GET /docs``, Swagger UI), served with no network.

Rule: the docs page loads nothing from outside this server. FastAPI's default
page pulls Swagger UI's script and stylesheet from a CDN (jsdelivr), so on a
machine or cluster without internet access it renders blank; here they come
from the copy vendored in the package (``static/swagger-ui/``, pinned version
and how to update in its README.md), under ``/static/swagger-ui/``. Like
``/health``, none of this needs the API key: the page and its assets are the
same for everyone, and the schema it shows (``/openapi.json``) is open already.

ReDoc (FastAPI's ``/redoc``) is not offered: it too loads from a CDN (and
Google Fonts), nothing advertises it, and one docs UI is enough, so it is not
worth vendoring a second megabyte-sized bundle.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(__file__).parent / "static" / "swagger-ui"
ASSETS_PATH = "/static/swagger-ui"  # outside /v1 and /ecoserve: no API key
DOCS_PATH = "/docs"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"  # FastAPI's default, kept for parity


def install_docs(app: FastAPI) -> None:
    """Add ``/docs``, its OAuth2 redirect page and the static assets to ``app``,
    which must be created with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="swagger-ui")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        # Behind a proxy with a root path, every URL the page loads carries it (as FastAPI's own page does).
        root = request.scope.get("root_path", "").rstrip("/")
        assets = root + ASSETS_PATH
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_PATH,
            # No online validator: it would send the schema's URL to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
