"""A benchmarked run's engine timelines: the EcoServe server's own record
(``GET /ecoserve/timeline``, what its dashboard draws), fetched for the run's
span once it ends.

Only an EcoServe front door keeps one: a stock vLLM server or a router is
refused before the run starts (``check``), not after it. The run's span is
taken on the server's clock, so a benchmark host whose clock is off neither
pulls in the previous run nor cuts this one's start. The server keeps the
last 15 minutes (``ecoserve.timeline.recorder.RETENTION_S``); a longer run's
timeline starts later than the run.
"""

from __future__ import annotations

import httpx
import msgspec

from ecoserve.bench.target import Target, TargetError
from ecoserve.timeline.document import Timeline, decode


def _get(target: Target, since: float, timeout: float) -> httpx.Response:
    url = target.base_url + "/ecoserve/timeline"
    try:
        r = httpx.get(url, params={"since": f"{since:.6f}"}, headers=target.headers, timeout=timeout)
    except httpx.HTTPError as e:
        raise TargetError(f"cannot reach {url}: {e}") from None
    if r.status_code != 200:
        raise TargetError(f"{url} answered {r.status_code}: a timeline needs an EcoServe server "
                          f"(`ecoserve serve`){' and its API key' if r.status_code == 401 else ''}")  # fmt: skip
    return r


def check(target: Target, timeout: float = 10.0) -> float:
    """Refuse a server that keeps no timeline, before any load is sent. Returns
    the server's time now (its clock, which its timeline uses): the ``since``
    of this run's ``fetch``, whatever this machine's clock says."""
    r = _get(target, 1e11, timeout)  # a time far ahead: an empty document, only its "end" matters
    try:
        return float(msgspec.json.decode(r.content)["end"])
    except (msgspec.DecodeError, KeyError, TypeError, ValueError) as e:
        raise TargetError(f"{target.base_url}/ecoserve/timeline sent no timeline document: {e}") from None


def fetch(target: Target, since: float, *, title: str, timeout: float = 30.0) -> Timeline:
    """The server's timeline from ``since`` (wall-clock seconds) on."""
    r = _get(target, since, timeout)
    try:
        doc = decode(r.content)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as e:
        raise TargetError(f"{target.base_url}/ecoserve/timeline sent a document of another shape: {e}") from None
    doc.source, doc.title, doc.seq = "benchmark", title, 0
    return doc
