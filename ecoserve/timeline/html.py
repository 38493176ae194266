"""Timelines as web pages: the live dashboard's page, and a run's timeline as one
self-contained HTML file.

Rule: one template (``static/dashboard.html``) with its stylesheet and script
inlined, so a page needs nothing beside itself (no CDN, no other request but
the live data). The live page carries no data: it fetches it, with the API key
the user types in. An offline page embeds its document.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from pathlib import Path

from ecoserve.timeline.document import Timeline, encode


@cache
def _asset(name: str) -> str:
    return resources.files("ecoserve.timeline").joinpath("static", name).read_text(encoding="utf-8")


SUFFIXES = (".html", ".png", ".json")  # what ``write`` can write


def _script_safe(data: str) -> str:
    """JSON inside <script>: every ``<`` as ``\\u003c`` (still the same JSON string),
    so no ``</script>`` or ``<!--`` can end or change the block."""
    return data.replace("<", "\\u003c")


def page(doc: Timeline | None, *, live: bool = False, base: str = "") -> str:
    """The page: ``live`` fetches from ``base`` (the server's own origin when
    empty); otherwise ``doc`` is drawn as it is."""
    if not live and doc is None:
        raise ValueError("an offline page needs its document")
    title = "dashboard" if live else (doc.title or f"{doc.source} run")  # type: ignore[union-attr]
    config = json.dumps({"live": live, "base": base})
    data = "null" if doc is None else encode(doc).decode()
    parts = {"CSS": _asset("dashboard.css"), "CONFIG": _script_safe(config), "DATA": _script_safe(data),
             "TITLE": _escape(title), "JS": _asset("dashboard.js").replace("</script", "<\\/script")}  # fmt: skip
    # One pass over the template: a value that happens to contain a placeholder stays as it is.
    return re.sub(r"__(CSS|CONFIG|DATA|TITLE|JS)__", lambda m: parts[m.group(1)], _asset("dashboard.html"))


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write(doc: Timeline, path: str | Path) -> Path:
    """Write ``doc`` by the file's suffix: ``.html`` (the page), ``.png``
    (matplotlib, ``png.py``) or ``.json`` (the document itself)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"a timeline is written as .html, .png or .json, not {p.name!r}")
    if suffix == ".html":
        p.write_text(page(doc), encoding="utf-8")
    elif suffix == ".png":
        from ecoserve.timeline.png import render_png

        render_png(doc, p)
    else:
        p.write_bytes(encode(doc))
    return p
