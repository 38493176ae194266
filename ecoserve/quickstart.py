"""Quick start: generate the tiny model, serve it with one stock vLLM engine, ask it once.

    python -m ecoserve.quickstart                 # one request, then stop the engine
    python -m ecoserve.quickstart --keep-serving  # keep the engine up until Ctrl-C

A stand-in until ``ecoserve serve`` exists: it proves the machine can run a real
vLLM (CPU build) engine on a locally generated model, with no network access.
The engine is a plain ``python -m vllm.entrypoints.openai.api_server`` (stock
scheduler, no EcoServe plugin), started in its own process group and always
stopped as a whole group on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0


def project_root() -> Path:
    """The checkout this module lives in, or the current directory for an installed copy."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ensure_tiny_model(cache: Path, seed: int = 0) -> Path:
    """Reuse ``cache/models/tiny`` if its marker says (tiny, seed); otherwise (re)generate it."""
    from ecoserve.models import make_model, model_matches

    path = cache / "models" / "tiny"
    if model_matches(path, "tiny", seed):
        print(f"model: reusing {path}", flush=True)
        return path
    print(f"model: generating the tiny model into {path} ...", flush=True)
    t0 = time.monotonic()
    make_model(path, size="tiny", seed=seed, force=True)
    print(f"model: done in {time.monotonic() - t0:.1f} s", flush=True)
    return path


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


def _http(url: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Engine:
    """One vLLM OpenAI API server in its own process group, logging to a file."""

    def __init__(self, model: Path, host: str, port: int, log_path: Path, max_model_len: int = 512) -> None:
        self.model, self.host, self.port, self.log_path = model, host, port, log_path
        self.url = f"http://{host}:{port}"
        self.cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model),
            "--host", host,
            "--port", str(port),
            "--enforce-eager",
            "--max-model-len", str(max_model_len),
            "--dtype", "bfloat16",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache: small, fixed, fast start
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: Ctrl-C is ours to forward, and we kill it whole
            )

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise RuntimeError(f"the engine exited with code {rc} before it was healthy")
            try:
                status, _ = _http(self.url + "/health", timeout=2.0)
                if status == 200:
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the engine was not healthy after {timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM the whole process group, wait, then SIGKILL whatever is left."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        # Children (EngineCore, workers) may outlive the leader: sweep the group.
        deadline = time.monotonic() + 5.0
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.wait(timeout=5.0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds through the finally that stops the engine


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ecoserve.quickstart",
        description=(
            "Generate the tiny random-weight model (reused from <repo>/.cache/models/tiny "
            "when present), start ONE stock vLLM CPU engine on it (no EcoServe plugin), "
            "send one /v1/completions request, print the prompt and the reply, and stop "
            "the engine. The weights are random, so the reply is gibberish: the point is "
            "that a real engine loads and serves a model made on this machine."
        ),
        epilog="Engine log: <cache>/logs/quickstart-engine-<port>.log. Needs the vllm-cpu (or vllm) package.",
    )
    p.add_argument("--keep-serving", action="store_true",
                   help="after the test request, keep the engine running (prints its URL) until Ctrl-C")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt of the test request (default: %(default)r)")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens to generate (ignore_eos is on) (default: %(default)s)")
    p.add_argument("--port", type=int, default=0, help="port of the engine (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address the engine listens on (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the model and logs go (default: <repo>/.cache)")
    p.add_argument("--startup-timeout", type=float, default=STARTUP_TIMEOUT_S,
                   help="seconds to wait for GET /health to return 200 (default: %(default)s)")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cache: Path = (args.cache_dir or project_root() / ".cache").resolve()
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Also when started in the background by a non-interactive shell, which ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    model = ensure_tiny_model(cache)
    port = args.port or free_port(args.host)
    engine = Engine(model, args.host, port, cache / "logs" / f"quickstart-engine-{port}.log")
    print(f"engine: starting vLLM on {engine.url} (log: {engine.log_path})", flush=True)
    t0 = time.monotonic()
    try:
        engine.start()
        try:
            engine.wait_healthy(args.startup_timeout)
        except RuntimeError as e:
            print(f"error: {e}. Last lines of {engine.log_path}:\n{_tail(engine.log_path)}", file=sys.stderr)
            return 1
        print(f"engine: healthy after {time.monotonic() - t0:.1f} s, listening on {engine.url}", flush=True)

        body = {
            "model": str(model),
            "prompt": args.prompt,
            "max_tokens": args.max_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
        }
        t1 = time.monotonic()
        status, raw = _http(engine.url + "/v1/completions", body, timeout=120.0)
        if status != 200:
            print(f"error: /v1/completions returned HTTP {status}: {raw[:2000]!r}", file=sys.stderr)
            return 1
        reply = json.loads(raw)
        text = reply["choices"][0]["text"]
        usage = reply.get("usage") or {}
        print(f"prompt: {args.prompt!r}")
        print(f"reply:  {text!r}")
        print(
            f"tokens: {usage.get('prompt_tokens')} in, {usage.get('completion_tokens')} out, "
            f"{time.monotonic() - t1:.2f} s (random weights, so the text is gibberish)",
            flush=True,
        )
        if args.keep_serving:
            print(
                f"\nserving {model} at {engine.url} (OpenAI API: {engine.url}/v1/completions, "
                f"{engine.url}/v1/chat/completions; model name {str(model)!r}). Ctrl-C to stop.",
                flush=True,
            )
            while True:
                if engine.proc is not None and engine.proc.poll() is not None:
                    print(f"error: the engine exited. Last lines of {engine.log_path}:\n{_tail(engine.log_path)}",
                          file=sys.stderr)  # fmt: skip
                    return 1
                time.sleep(1.0)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        print("engine: stopping ...", flush=True)
        engine.stop()
        print("engine: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
