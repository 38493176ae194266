"""The front door refuses bad input with a 4xx in OpenAI's error shape, and stays up.

Part 1: one table row per class of bad input (missing or wrong-typed fields,
bad ``max_tokens``, a prompt beyond the model's context, unknown model,
invalid JSON, oversized bodies, wrong content types), each with its exact
status and words the message must contain. Part 2: hypothesis sends a few
thousand generated bodies to /v1/completions and /v1/chat/completions; none
may get a 5xx, every refusal must be OpenAI's error JSON, and /health must
still answer afterwards. Everything runs in process (httpx.ASGITransport)
against stand-in engines (ecoserve.testing.fake_engine): no vLLM, no GPU.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecoserve.live.coordinator import Coordinator
from ecoserve.server.app import MAX_BODY_BYTES, create_app
from tests.live.helpers import fakes

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
MAX_MODEL_LEN = 256
ERROR_KEYS = {"message", "type", "param", "code"}


@contextlib.asynccontextmanager
async def front_door(max_body_bytes: int = MAX_BODY_BYTES, **fake_kw):
    """The app on one fake engine (a small model: 256 tokens of context, 256 of KV),
    and an in-process client for it."""
    async with fakes(1, **{"max_model_len": MAX_MODEL_LEN, "kv_blocks": 16, "block_size": 16, **fake_kw}) as (engine,):
        async with Coordinator(engine_urls=[engine.url]) as coord:
            app = create_app(coord, max_body_bytes=max_body_bytes)
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://ecoserve", timeout=30) as client:
                yield client, coord, engine


def assert_openai_error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, r.text
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"], r.text
    assert err["code"] == r.status_code and isinstance(err["type"], str), r.text
    return err


# ---- 1. each class of bad input -------------------------------------------------------

J = "application/json"
OK_CHAT = [{"role": "user", "content": "hi"}]
LONG = "w " * (MAX_MODEL_LEN + 10)  # the fake engine counts one token per word

# (id, path, body (dict: sent as JSON; bytes: sent raw), content type, status, param, words in the message)
CASES = [
    # missing fields
    ("no-prompt", COMPLETIONS, {"max_tokens": 2}, J, 400, "prompt", ["prompt", "required"]),
    ("no-messages", CHAT, {"max_tokens": 2}, J, 400, "messages", ["messages", "required"]),
    ("empty-messages", CHAT, {"messages": []}, J, 400, "messages", ["messages"]),
    ("message-no-role", CHAT, {"messages": [{"content": "hi"}]}, J, 400, "messages", ["messages.0.role", "required"]),
    (
        "content-part-no-type",
        CHAT,
        {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
        J,
        400,
        "messages",
        ["messages.0.content", "type"],
    ),
    ("empty-prompt-list", COMPLETIONS, {"prompt": []}, J, 400, "prompt", ["prompt"]),
    ("empty-token-list", COMPLETIONS, {"prompt": [[]]}, J, 400, "prompt", ["prompt"]),
    # wrong types
    ("prompt-int", COMPLETIONS, {"prompt": 5}, J, 400, "prompt", ["prompt", "got an integer"]),
    ("prompt-object", COMPLETIONS, {"prompt": {"a": 1}}, J, 400, "prompt", ["prompt", "got an object"]),
    ("prompt-mixed-list", COMPLETIONS, {"prompt": [1, "a"]}, J, 400, "prompt", ["prompt"]),
    ("negative-token-id", COMPLETIONS, {"prompt": [-1]}, J, 400, "prompt", ["prompt", "greater than or equal to 0"]),
    (
        "max_tokens-string",
        COMPLETIONS,
        {"prompt": "p", "max_tokens": "5"},
        J,
        400,
        "max_tokens",
        ["max_tokens", "integer"],
    ),
    ("max_tokens-float", COMPLETIONS, {"prompt": "p", "max_tokens": 5.5}, J, 400, "max_tokens", ["max_tokens"]),
    ("max_tokens-bool", COMPLETIONS, {"prompt": "p", "max_tokens": True}, J, 400, "max_tokens", ["max_tokens"]),
    ("n-string", COMPLETIONS, {"prompt": "p", "n": "2"}, J, 400, "n", ["n", "integer"]),
    ("stream-string", COMPLETIONS, {"prompt": "p", "stream": "yes"}, J, 400, "stream", ["stream", "boolean"]),
    ("temperature-string", COMPLETIONS, {"prompt": "p", "temperature": "hot"}, J, 400, "temperature", ["temperature"]),
    ("messages-string", CHAT, {"messages": "hi"}, J, 400, "messages", ["messages", "list"]),
    ("message-not-object", CHAT, {"messages": [1]}, J, 400, "messages", ["messages.0"]),
    ("stop-int", COMPLETIONS, {"prompt": "p", "stop": 3}, J, 400, "stop", ["stop"]),
    (
        "stream_options-not-object",
        COMPLETIONS,
        {"prompt": "p", "stream": True, "stream_options": 1},
        J,
        400,
        "stream_options",
        ["stream_options"],
    ),
    # out of range
    (
        "max_tokens-zero",
        COMPLETIONS,
        {"prompt": "p", "max_tokens": 0},
        J,
        400,
        "max_tokens",
        ["max_tokens", "greater than or equal to 1"],
    ),
    ("max_tokens-negative", COMPLETIONS, {"prompt": "p", "max_tokens": -3}, J, 400, "max_tokens", ["max_tokens"]),
    (
        "max_completion_tokens-zero",
        CHAT,
        {"messages": OK_CHAT, "max_completion_tokens": 0},
        J,
        400,
        "max_completion_tokens",
        ["max_completion_tokens"],
    ),
    (
        "max_tokens-beyond-context",
        COMPLETIONS,
        {"prompt": "p", "max_tokens": MAX_MODEL_LEN + 1},
        J,
        400,
        "max_tokens",
        ["maximum context length", str(MAX_MODEL_LEN)],
    ),
    (
        "max_tokens-huge",
        COMPLETIONS,
        {"prompt": "p", "max_tokens": 10**30},
        J,
        400,
        "max_tokens",
        ["max_tokens", "out of range"],
    ),
    (
        "chat-max_tokens-beyond-context",
        CHAT,
        {"messages": OK_CHAT, "max_tokens": 10**6},
        J,
        400,
        "max_tokens",
        ["maximum context length"],
    ),
    ("n-zero", COMPLETIONS, {"prompt": "p", "n": 0}, J, 400, "n", ["n"]),
    ("n-huge", COMPLETIONS, {"prompt": "p", "n": 10**6}, J, 400, "n", ["n", "less than or equal to 128"]),
    ("temperature-negative", COMPLETIONS, {"prompt": "p", "temperature": -1}, J, 400, "temperature", ["temperature"]),
    ("top_p-zero", COMPLETIONS, {"prompt": "p", "top_p": 0}, J, 400, "top_p", ["top_p"]),
    ("seed-huge", COMPLETIONS, {"prompt": "p", "seed": 2**70}, J, 400, "seed", ["seed"]),
    ("extra-int-huge", COMPLETIONS, {"prompt": "p", "top_k": 2**70}, J, 400, "top_k", ["top_k", "out of range"]),
    ("token-id-huge", COMPLETIONS, {"prompt": [2**70]}, J, 400, "prompt", ["prompt", "out of range"]),
    (
        "temperature-nan",
        COMPLETIONS,
        b'{"prompt": "p", "temperature": NaN}',
        J,
        400,
        "temperature",
        ["temperature", "finite"],
    ),
    ("extra-infinity", COMPLETIONS, b'{"prompt": "p", "top_k": Infinity}', J, 400, "top_k", ["top_k"]),
    (
        "lone-surrogate",
        COMPLETIONS,
        b'{"prompt": "\\ud800", "max_tokens": 2}',
        J,
        400,
        "prompt",
        ["prompt", "surrogate"],
    ),
    (
        "nested-too-deep",
        COMPLETIONS,
        {"prompt": "p", "x": json.loads("[" * 80 + "]" * 80)},
        J,
        400,
        "x",
        ["x", "nested too deeply"],
    ),
    # a prompt longer than the model accepts
    (
        "prompt-beyond-context",
        COMPLETIONS,
        {"prompt": LONG, "max_tokens": 1},
        J,
        400,
        None,
        ["maximum context length", "prompt"],
    ),
    (
        "token-prompt-beyond-context",
        COMPLETIONS,
        {"prompt": [1] * (MAX_MODEL_LEN + 1), "max_tokens": 1},
        J,
        400,
        None,
        ["maximum context length", "prompt"],
    ),
    (
        "chat-beyond-context",
        CHAT,
        {"messages": [{"role": "user", "content": LONG}]},
        J,
        400,
        None,
        ["maximum context length"],
    ),
    # unknown model
    ("unknown-model", COMPLETIONS, {"prompt": "p", "model": "gpt-9"}, J, 404, "model", ["gpt-9", "does not exist"]),
    ("unknown-model-chat", CHAT, {"messages": OK_CHAT, "model": ""}, J, 404, "model", ["does not exist"]),
    ("model-not-string", COMPLETIONS, {"prompt": "p", "model": 7}, J, 400, "model", ["model", "string"]),
    # invalid JSON, and bodies that are not one object
    ("json-truncated", COMPLETIONS, b'{"prompt": "p",', J, 400, None, ["not valid JSON"]),
    ("json-garbage", CHAT, b"\x00\xff not json", J, 400, None, ["not valid JSON"]),
    ("json-trailing", COMPLETIONS, b'{"prompt": "p"} x', J, 400, None, ["not valid JSON"]),
    ("empty-body", COMPLETIONS, b"", J, 400, None, ["body is missing"]),
    ("body-array", COMPLETIONS, b"[1, 2]", J, 400, None, ["JSON object"]),
    ("body-string", CHAT, b'"hello"', J, 400, None, ["JSON object"]),
    (
        "body-deep-array",
        COMPLETIONS,
        b"[" * 100_000 + b"]" * 100_000,
        J,
        400,
        None,
        ["not valid JSON", "nested too deeply"],
    ),
    # wrong content types
    ("text-plain", COMPLETIONS, {"prompt": "p"}, "text/plain", 415, None, ["Content-Type", "text/plain", "JSON"]),
    ("form", COMPLETIONS, b"prompt=p", "application/x-www-form-urlencoded", 415, None, ["Content-Type"]),
    ("multipart", CHAT, b"--x--", "multipart/form-data; boundary=x", 415, None, ["multipart/form-data"]),
]


@pytest.mark.parametrize(
    ("path", "body", "ctype", "status", "param", "words"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
async def test_bad_input_is_refused_with_openai_error(path, body, ctype, status, param, words):
    async with front_door() as (client, coord, engine):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await client.post(path, content=content, headers={"content-type": ctype})
        assert r.status_code == status, r.text
        err = assert_openai_error(r)
        for word in words:
            assert word in err["message"], (word, err)
        if param is not None:
            assert err["param"] == param, err
        assert engine.requests == []  # refused at the door: nothing reached the engine
        assert (await client.get("/health")).status_code == 200
        ok = {"prompt": "p", "max_tokens": 2} if path == COMPLETIONS else {"messages": OK_CHAT, "max_tokens": 2}
        assert (await client.post(path, json=ok)).status_code == 200  # and it still serves
        assert coord.status()["in_flight"] == 0


async def test_json_without_content_type_and_json_variants_are_served():
    async with front_door() as (client, _, _):
        body = json.dumps({"prompt": "p", "max_tokens": 2}).encode()
        for headers in (
            {},
            {"content-type": "application/json; charset=utf-8"},
            {"content-type": "application/vnd.x+json"},
        ):
            r = await client.post(COMPLETIONS, content=body, headers=headers)
            assert r.status_code == 200, (headers, r.text)


async def test_an_untyped_body_from_a_browser_is_refused():
    """No CORS preflight guards a cross-origin POST with an untyped body: it must
    not be taken as JSON, or any web page could use a keyless local server."""
    async with front_door() as (client, _, engine):
        body = json.dumps({"prompt": "p", "max_tokens": 2}).encode()
        r = await client.post(COMPLETIONS, content=body, headers={"origin": "https://evil.example"})
        assert r.status_code == 415 and "Origin" in assert_openai_error(r)["message"]
        r = await client.post("/ecoserve/engines", content=b"{}", headers={"origin": "https://evil.example"})
        assert r.status_code == 415
        assert engine.requests == []
        r = await client.post(COMPLETIONS, content=body, headers={"origin": "https://app.example", "content-type": J})
        assert r.status_code == 200  # a typed body from a page goes on (CORS decides what it may read)


async def test_oversized_bodies_are_413():
    limit = 4096
    async with front_door(max_body_bytes=limit) as (client, _, engine):
        big = json.dumps({"prompt": "a" * limit}).encode()
        r = await client.post(COMPLETIONS, content=big, headers={"content-type": J})  # Content-Length says so
        assert r.status_code == 413
        assert "larger than" in assert_openai_error(r)["message"]

        async def chunks():  # no Content-Length: counted as it arrives
            for _ in range(8):
                yield b" " * 1024

        r = await client.post(COMPLETIONS, content=chunks(), headers={"content-type": J})
        assert r.status_code == 413 and str(limit) in assert_openai_error(r)["message"]
        r = await client.post(COMPLETIONS, content=b"{}", headers={"content-type": J, "content-length": "nope"})
        assert r.status_code == 400
        ok = json.dumps({"prompt": "a " * 10, "max_tokens": 2}).encode()
        assert (await client.post(COMPLETIONS, content=ok, headers={"content-type": J})).status_code == 200
        assert engine.requests and all(len(json.dumps(b)) < limit for b in engine.requests)
        assert (await client.get("/health")).status_code == 200
        assert 'ecoserve_requests_total{outcome="client_error"} 3.0' in (await client.get("/metrics")).text


async def test_default_body_limit_is_16_mib():
    assert MAX_BODY_BYTES == 16 << 20
    async with front_door() as (client, _, _):
        body = b'{"prompt": "' + b"a" * MAX_BODY_BYTES + b'"}'
        r = await client.post(COMPLETIONS, content=body, headers={"content-type": J})
        assert r.status_code == 413
        assert_openai_error(r)


# ---- 2. fuzz ---------------------------------------------------------------------------

_chars = st.characters(codec=None, exclude_categories=())  # lone surrogates included
text = st.text(_chars, max_size=12) | st.sampled_from(["", "p", "hello world", "fake-model", "user", "\u00e9\u4e2d"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 40)
    | st.integers()
    | st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**40])
    | st.floats(allow_nan=True, allow_infinity=True)
    | text
)
junk = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(text, c, max_size=4), max_leaves=8)


def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    """A field's plausible value: valid about nine times in ten."""
    return st.integers(0, 9).flatmap(lambda i: valid if i < 9 else invalid)


small_int = st.integers(-2, 12)
token_ids = st.lists(mostly(st.integers(0, 50_000), st.integers(-2, -1) | st.sampled_from([2**40, 2**70])), max_size=6)
sampling = {
    "model": mostly(st.just("fake-model"), st.sampled_from(["other", ""])),
    "n": mostly(st.integers(1, 3), st.integers(-1, 0) | st.sampled_from([128, 129, 10**9])),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries(
        {}, optional={"include_usage": st.booleans(), "continuous_usage_stats": st.booleans()}
    ),
    "stop": text | st.lists(text, max_size=3),
    "temperature": mostly(st.floats(0, 2), st.floats(-1, -0.01) | st.sampled_from([float("nan"), float("inf")])),
    "top_p": mostly(st.floats(0.01, 1), st.sampled_from([0, -0.5, 1.5])),
    "seed": mostly(st.integers(0, 2**32), st.integers()),
    "ignore_eos": st.booleans(),
    "presence_penalty": mostly(st.floats(-2, 2), st.floats(2.01, 1e9)),
    "frequency_penalty": mostly(st.floats(-2, 2), st.floats(-1e9, -2.01)),
    "user": text,
    "top_k": mostly(st.integers(-1, 50), st.integers()),  # passed through to the engine
    "logit_bias": st.dictionaries(text, st.floats(-100, 100), max_size=3),
}
max_tokens = mostly(st.integers(1, 12), small_int | st.integers() | st.sampled_from([MAX_MODEL_LEN, 10**30]))
content_part = st.fixed_dictionaries({"type": mostly(st.just("text"), junk)}, optional={"text": text})
message = st.fixed_dictionaries(
    {"role": mostly(st.sampled_from(["user", "system", "assistant"]), junk)},
    optional={"content": mostly(text | st.none() | st.lists(content_part, max_size=3), junk), "name": text},
)  # fmt: skip
COMPLETION_FIELDS = {
    **sampling,
    "prompt": mostly(
        text | token_ids | st.lists(text, min_size=1, max_size=3) | st.lists(token_ids, max_size=3),
        st.just([]) | st.lists(st.lists(text)),
    ),
    "max_tokens": max_tokens,
    "logprobs": mostly(st.integers(0, 5), st.integers(-3, -1)),
    "echo": st.booleans(),
    "suffix": text,
}
CHAT_FIELDS = {
    **sampling,
    "messages": mostly(st.lists(message, min_size=1, max_size=4), st.just([])),
    "max_tokens": max_tokens,
    "max_completion_tokens": max_tokens,
    "logprobs": st.booleans(),
    "top_logprobs": mostly(st.integers(0, 5), st.integers(-3, -1)),
}


def request_body(fields: dict[str, st.SearchStrategy], required: str) -> st.SearchStrategy:
    """A body with a random subset of the fields (``required`` usually among them), some
    overwritten by arbitrary JSON (wrong types, huge numbers, unicode, nested junk), some unknown."""
    plausible = st.fixed_dictionaries({}, optional=fields)
    others = {k: v for k, v in fields.items() if k != required}
    with_required = st.fixed_dictionaries({required: fields[required]}, optional=others)
    overrides = st.dictionaries(st.sampled_from([*fields, "junk"]) | text, junk, max_size=3)
    body = st.integers(0, 5).flatmap(lambda i: with_required if i < 5 else plausible)
    extra = st.integers(0, 2).flatmap(lambda i: st.just({}) if i < 2 else overrides)
    return st.tuples(body, extra).map(lambda t: {**t[0], **t[1]})


completion_body = request_body(COMPLETION_FIELDS, "prompt")
chat_body = request_body(CHAT_FIELDS, "messages")


def raw(bodies: st.SearchStrategy) -> st.SearchStrategy:
    """What goes on the wire: mostly the generated object, sometimes any JSON value or any bytes."""
    as_json = bodies.map(lambda b: json.dumps(b).encode())
    anything = st.one_of(junk.map(lambda b: json.dumps(b).encode()), st.binary(max_size=64))
    return st.integers(0, 9).flatmap(lambda i: as_json if i < 9 else anything)


def fuzz(path: str, bodies: st.SearchStrategy, examples: int) -> collections.Counter:
    """Send ``examples`` generated bodies to ``path``; check every reply; return the status histogram."""
    statuses: collections.Counter = collections.Counter()
    loop = asyncio.new_event_loop()
    door = front_door()
    client, coord, _ = loop.run_until_complete(door.__aenter__())
    try:

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
        @given(raw(bodies))
        def one(content: bytes) -> None:
            r = loop.run_until_complete(client.post(path, content=content, headers={"content-type": J}))
            statuses[r.status_code] += 1
            assert r.status_code < 500, (content[:300], r.text[:500])
            if r.status_code >= 400:
                assert 400 <= r.status_code < 500
                assert_openai_error(r)
            else:
                assert 200 <= r.status_code < 300
                assert (
                    r.text.rstrip().endswith("data: [DONE]") if json.loads(content).get("stream") else r.json()["usage"]
                )

        one()
        assert loop.run_until_complete(client.get("/health")).status_code == 200
        assert coord.status()["in_flight"] == 0 and coord.status()["pending"] == 0
        ok = loop.run_until_complete(client.post(COMPLETIONS, json={"prompt": "p", "max_tokens": 2}))
        assert ok.status_code == 200
    finally:
        loop.run_until_complete(door.__aexit__(None, None, None))
        loop.close()
    return statuses


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_fuzzed_bodies_never_5xx(path: str) -> None:
    start = time.monotonic()
    body = completion_body if path == COMPLETIONS else chat_body
    statuses = fuzz(path, body, examples=1500)
    sent = sum(statuses.values())
    print(
        f"\nfuzz {path}: {sent} requests in {time.monotonic() - start:.1f}s; statuses {dict(sorted(statuses.items()))}"
    )
    assert sent >= 1000 and not any(s >= 500 for s in statuses)
    assert statuses[200] > 0 and statuses[400] > 0  # it reached both the engine and the refusals
