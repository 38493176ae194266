"""A real headless browser for tests: Chromium driven over the DevTools protocol.

No Selenium, no Playwright (both download their own browser builds, which a
machine without internet cannot): Debian's ``chromium`` package, started with
``--remote-debugging-port``, and a few DevTools calls over one WebSocket
(``websockets``' sync client). ``python3 -m ecoserve.devenv test`` installs the
package when it is missing and it can (root, apt-get).

    with Browser() as b:
        b.goto("http://127.0.0.1:8000/ecoserve/dashboard")
        b.wait_for("document.querySelectorAll('.lane').length == 2")
        png = b.screenshot()
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from ecoserve.testing.ports import free_port

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NOT_FOUND = ("no Chromium found (looked for {names} on PATH, and $ECOSERVE_CHROMIUM). Install Debian's "
             "`chromium` package (apt-get install chromium); `python3 -m ecoserve.devenv test` does it when "
             "run as root on a machine with apt-get.")  # fmt: skip


def find_chromium() -> str | None:
    explicit = os.environ.get("ECOSERVE_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, width: int = 1400, height: int = 1000, timeout: float = 30.0) -> None:
        exe = find_chromium()
        if exe is None:
            raise BrowserError(NOT_FOUND.format(names=", ".join(CANDIDATES)))
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="ecoserve-chromium-")
        self.port = free_port()
        self._log = open(os.path.join(self._profile, "chromium.log"), "wb")
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             f"--remote-debugging-port={self.port}", f"--user-data-dir={self._profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT)  # fmt: skip
        self._ids = itertools.count(1)
        try:
            self._ws = self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> Any:
        from websockets.sync.client import connect

        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    conn = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=self.timeout)
                    return conn.__enter__()  # websockets wants its connections entered; close() exits it
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium's DevTools did not answer in {self.timeout}s: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self) -> str:
        self._log.flush()
        with open(os.path.join(self._profile, "chromium.log"), "rb") as f:
            return f.read()[-2000:].decode(errors="replace")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are dropped."""
        mid = next(self._ids)
        self._ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:  # events kept coming, the answer did not
                raise BrowserError(f"{method}: no answer in {self.timeout}s")
            msg = json.loads(self._ws.recv(timeout=left))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited), as JSON."""
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise BrowserError(f"{expression!r} threw: {res['exceptionDetails'].get('exception', res['exceptionDetails'])}")
        return res["result"].get("value")

    def goto(self, url: str) -> None:
        """Navigate and wait until the new page has loaded (not the old one's readyState)."""
        self.call("Page.enable")
        self.eval("window.__ecoserve_old_page = true")
        self.call("Page.navigate", url=url)
        self.wait_for("!window.__ecoserve_old_page && document.readyState === 'complete'")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Until ``expression`` is truthy; its value. Raises with the expression on timeout."""
        deadline = time.monotonic() + (timeout or self.timeout)
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.eval(expression)
            except BrowserError:
                last = None
            if last:
                return last
            time.sleep(0.1)
        raise BrowserError(f"timed out waiting for {expression!r} (last value {last!r})")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
