"""`ecoserve serve`'s flags that vLLM `serve` has too, with vLLM's names and
meanings: --served-model-name, TLS (--ssl-*), CORS (--allowed-origins ...),
--uvicorn-log-level, several --api-key keys. Against stand-in engines only
(ecoserve.testing.fake_engine)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

from ecoserve.cli.http_options import HttpOptions, expand_multi_value, is_loopback, tls_settings
from ecoserve.cli.serve import serve
from ecoserve.live.coordinator import Coordinator
from ecoserve.openai.chunks import ModelRename
from ecoserve.server.app import create_app
from ecoserve.server.cors import CorsSettings
from ecoserve.testing.ports import free_port
from tests.live.helpers import fakes, served

ENGINE_MODEL = "fake-model"  # what the stand-in engines call their model


# ---- helpers ---------------------------------------------------------------------------


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ecoserve-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    key_path, cert_path = tmp / "key.pem", tmp / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@contextlib.asynccontextmanager
async def _serving(app, **uvicorn_kw):
    """``app`` on a free loopback port in this event loop, with uvicorn.Config keywords (TLS)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **uvicorn_kw))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


def _usage_error(args: list[str]) -> str:
    """Run `ecoserve serve ARGS`, expecting click's usage error (exit 2) before anything starts."""
    result = CliRunner().invoke(serve, ["--engine-url", "http://127.0.0.1:9", "--port", "0", *args])
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    return result.output


# ---- --served-model-name ---------------------------------------------------------------


async def test_served_model_name_is_the_api_name_and_aliases_work():
    async with fakes(1, token_interval=0.001) as (a,):
        async with Coordinator(engine_urls=[a.url], served_model_name=["public", "alias"]) as coord:
            assert coord.served_model == "public" and coord.model_names == ("public", "alias")
            reply = await coord.generate("x", max_tokens=2, model="alias")  # the Python API reports it too
            assert reply["model"] == "public"
            async with served(coord) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
                cards = (await c.get("/v1/models")).json()["data"]
                assert [m["id"] for m in cards] == ["public", "alias"] and cards[0]["root"] == ENGINE_MODEL
                for name in ("public", "alias", None):  # either name, or none at all
                    body = {"prompt": "hello", "max_tokens": 3, **({"model": name} if name else {})}
                    r = await c.post("/v1/completions", json=body)
                    assert r.status_code == 200 and r.json()["model"] == "public", r.text
                for name in (ENGINE_MODEL, "unknown"):  # the engines' own name is not the API's any more
                    r = await c.post("/v1/completions", json={"model": name, "prompt": "hello", "max_tokens": 3})
                    assert r.status_code == 404 and name in r.json()["error"]["message"]
                body = {"model": "alias", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                        "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
                async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    lines = [ln async for ln in r.aiter_lines() if ln.startswith("data: {")]
                chunks = [json.loads(ln[6:]) for ln in lines]
                assert len(chunks) >= 3 and {ch["model"] for ch in chunks} == {"public"}
                assert (await c.get("/ecoserve/status")).json()["model"] == "public"


async def test_without_served_model_name_the_engines_name_serves_as_before():
    async with fakes(1) as (a,):
        async with Coordinator(engine_urls=[a.url]) as coord, served(coord) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                assert [m["id"] for m in (await c.get("/v1/models")).json()["data"]] == [ENGINE_MODEL]
                r = await c.post("/v1/completions", json={"model": ENGINE_MODEL, "prompt": "hi", "max_tokens": 2})
                assert r.status_code == 200 and r.json()["model"] == ENGINE_MODEL
                r = await c.post("/v1/completions", json={"model": "public", "prompt": "hi", "max_tokens": 2})
                assert r.status_code == 404


def test_model_rename_rewrites_the_top_level_model_only():
    rename = ModelRename("/models/llama", "public")
    fast = b'{"id":"c1","model":"/models/llama","choices":[{"text":"\\"model\\":\\"/models/llama\\""}]}'
    assert rename(fast) == b'{"id":"c1","model":"public","choices":[{"text":"\\"model\\":\\"/models/llama\\""}]}'
    spaced = b'{"id": "c1", "model": "/models/llama", "choices": []}'  # not vLLM's spelling: the exact path
    assert json.loads(rename(spaced)) == {"id": "c1", "model": "public", "choices": []}
    for untouched in (b'{"error":{"message":"bad","code":400}}', b'{"model":"other","choices":[]}', b"[DONE]"):
        assert rename(untouched) == untouched


def test_served_model_name_must_be_non_empty():
    with pytest.raises(ValueError):
        Coordinator(engine_urls=["http://127.0.0.1:9"], served_model_name=["ok", ""])
    assert Coordinator(engine_urls=["http://127.0.0.1:9"], served_model_name="one").model_names == ("one",)


# ---- the command line: vLLM's spellings, bad combinations -------------------------------


def test_vllm_spellings_parse():
    args = ["--served-model-name", "a", "b", "--port", "1", "--", "--served-model-name", "x", "y"]
    assert expand_multi_value(args) == ["--served-model-name", "a", "--served-model-name", "b", "--port", "1",
                                        "--", "--served-model-name", "x", "y"]  # fmt: skip
    ctx = serve.make_context("serve", ["--engine-url", "http://e:1", "--served-model-name", "a", "b", "--api-key",
                                       "k1", "k2", "--log-level", "DEBUG", "--shutdown-timeout", "5",
                                       "--uvicorn-log-level", "trace", "--", "--max-model-len", "64"])  # fmt: skip
    p = ctx.params
    assert p["served_model_name"] == ("a", "b") and p["api_key"] == ("k1", "k2")
    assert (p["log_level"], p["shutdown_grace"], p["uvicorn_log_level"]) == ("debug", 5.0, "trace")
    assert p["engine_args"] == ("--max-model-len", "64")


def test_bad_flag_combinations_are_usage_errors(tmp_path: Path):
    key, cert = _self_signed(tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = [
        (["--ssl-keyfile", str(key)], "--ssl-keyfile without --ssl-certfile"),
        (["--ssl-certfile", str(cert)], "--ssl-certfile without --ssl-keyfile"),
        (["--ssl-keyfile", str(tmp_path / "missing.pem"), "--ssl-certfile", str(cert)], "does not exist"),
        (["--ssl-keyfile", str(junk), "--ssl-certfile", str(junk)], "cannot load the certificate"),
        (["--ssl-keyfile", str(key), "--ssl-certfile", str(cert), "--ssl-cert-reqs", "2"], "--ssl-ca-certs"),
        (["--ssl-ca-certs", str(cert)], "need --ssl-keyfile and --ssl-certfile"),
        (["--ssl-keyfile", str(key), "--ssl-certfile", str(cert), "--ssl-ciphers", "NO-SUCH-CIPHER"], "cipher"),
        (["--allowed-origins", "*"], "JSON list"),
        (["--allowed-origins", '{"a": 1}'], "JSON list"),
        (["--allowed-methods", '["GET"]'], "give --allowed-origins"),
        (["--allow-credentials"], "give --allowed-origins"),
        (["--uvicorn-log-level", "loud"], "loud"),
    ]
    for args, message in cases:
        out = _usage_error(args)
        assert message in out, (args, out)


def test_an_api_key_in_clear_text_off_loopback_is_warned_about(tmp_path: Path):
    key, cert = _self_signed(tmp_path)
    tls = HttpOptions(ssl=tls_settings(str(key), str(cert), None, 0, None))
    assert HttpOptions().cleartext_key_warning("0.0.0.0", ("k",)) is not None
    for host in ("127.0.0.1", "::1", "localhost"):
        assert is_loopback(host) and HttpOptions().cleartext_key_warning(host, ("k",)) is None
    assert tls.cleartext_key_warning("0.0.0.0", ("k",)) is None  # encrypted
    assert HttpOptions().cleartext_key_warning("0.0.0.0", ()) is None  # no key to leak
    assert tls.scheme == "https" and HttpOptions().scheme == "http"
    profile = tmp_path / "profile.json"
    profile.write_text("{}")  # a later usage error stops it before anything starts
    out = _usage_error(["--host", "0.0.0.0", "--api-key", "k", "--prefill-coeffs", "0,0,0", "--profile", str(profile)])
    assert "--api-key without TLS on 0.0.0.0" in out


# ---- TLS, CORS and API keys at the front door -------------------------------------------


async def test_tls_serves_https_and_refuses_plain_http(tmp_path: Path):
    key, cert = _self_signed(tmp_path)
    async with fakes(1) as (a,):
        async with Coordinator(engine_urls=[a.url]) as coord:
            async with _serving(create_app(coord), **tls_settings(str(key), str(cert), None, 0, None)) as port:
                trust = ssl.create_default_context(cafile=str(cert))
                async with httpx.AsyncClient(verify=trust, timeout=30) as c:
                    r = await c.post(f"https://127.0.0.1:{port}/v1/completions", json={"prompt": "hi", "max_tokens": 2})
                    assert r.status_code == 200 and r.json()["model"] == ENGINE_MODEL
                async with httpx.AsyncClient(timeout=10) as c:
                    with pytest.raises(httpx.HTTPError):  # plain HTTP on a TLS port
                        await c.get(f"http://127.0.0.1:{port}/health")
                async with httpx.AsyncClient(timeout=10) as c:  # the system's CAs do not know it
                    with pytest.raises(httpx.ConnectError):
                        await c.get(f"https://127.0.0.1:{port}/health")


async def test_cors_answers_allowed_origins_only_and_is_off_by_default():
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    async with fakes(1) as (a,):
        async with Coordinator(engine_urls=[a.url]) as coord:
            app = create_app(coord, api_key="k", cors=CorsSettings(("https://ok.example",)))
            async with _serving(app) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                r = await c.options("/v1/completions", headers={"Origin": "https://ok.example", **preflight})
                assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://ok.example"
                assert "POST" in r.headers["access-control-allow-methods"]
                r = await c.options("/v1/completions", headers={"Origin": "https://evil.example", **preflight})
                assert "access-control-allow-origin" not in r.headers
                # A refusal carries the headers too, so the page sees the 401, not a CORS failure.
                r = await c.post("/v1/completions", json={"prompt": "x"}, headers={"Origin": "https://ok.example"})
                assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://ok.example"
                r = await c.get("/v1/models", headers={"Origin": "https://evil.example", "Authorization": "Bearer k"})
                assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
            async with served(coord) as url, httpx.AsyncClient(base_url=url) as c:  # no --allowed-origins
                r = await c.options("/v1/completions", headers={"Origin": "https://ok.example", **preflight})
                assert "access-control-allow-origin" not in r.headers


async def test_any_of_several_api_keys_is_accepted():
    async with fakes(1) as (a,):
        async with Coordinator(engine_urls=[a.url]) as coord, served(coord, api_key=("k1", "k2")) as url:
            async with httpx.AsyncClient(base_url=url) as c:
                for key, status in (("k1", 200), ("k2", 200), ("k3", 401), ("k1k2", 401)):
                    r = await c.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
                    assert r.status_code == status, key
                assert (await c.get("/v1/models")).status_code == 401


# ---- the whole command ------------------------------------------------------------------


def test_serve_with_tls_names_and_cors_end_to_end(tmp_path: Path, start_fake_engine):
    """`ecoserve serve` as a user starts it, vLLM's spellings throughout."""
    key, cert = _self_signed(tmp_path)
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    with start_fake_engine() as fake:
        cmd = [sys.executable, "-m", "ecoserve.cli.serve", "--engine-url", fake.url, "--port", str(port),
               "--log-dir", str(tmp_path), "--served-model-name", "public", "alias", "--ssl-keyfile", str(key),
               "--ssl-certfile", str(cert), "--allowed-origins", '["https://ok.example"]', "--api-key", "k1", "k2",
               "--uvicorn-log-level", "warning"]  # fmt: skip
        out_path = tmp_path / "serve.out"
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, process_group=0)
        try:
            trust = ssl.create_default_context(cafile=str(cert))
            with httpx.Client(base_url=base, verify=trust, timeout=30, headers={"Authorization": "Bearer k2"}) as c:
                deadline = time.time() + 90
                while True:
                    assert proc.poll() is None, out_path.read_text()
                    with contextlib.suppress(httpx.HTTPError):
                        if c.get("/health").status_code == 200:
                            break
                    assert time.time() < deadline, out_path.read_text()
                    time.sleep(0.2)
                assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["public", "alias"]
                r = c.post("/v1/completions", json={"model": "alias", "prompt": "hello", "max_tokens": 3})
                assert r.status_code == 200 and r.json()["model"] == "public"
                r = c.options("/v1/completions", headers={"Origin": "https://ok.example",
                                                          "Access-Control-Request-Method": "POST"})  # fmt: skip
                assert r.headers.get("access-control-allow-origin") == "https://ok.example"
            text = out_path.read_text()
            assert f"requests to {base}/v1 (model 'public')" in text and "http://" not in text.split("ready")[1]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, out_path.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
