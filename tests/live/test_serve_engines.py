"""`ecoserve serve` with two real vLLM CPU engines (tiny model), driven by real clients.

One server for the whole module, started in a subprocess exactly as a user
would (`python -m ecoserve.cli.serve` is the `ecoserve serve` command), each
engine pinned to one core. A low TTFT SLO (0.1 s) makes the EcoServe policy
spread a burst over both engines (one prefill window holds only a few
requests), so rolling activation is exercised. The last test sends SIGTERM
and checks that no engine process is left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import time

import httpx
import pytest

from ecoserve.engine.launcher import group_alive

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.engine
START_TIMEOUT_S = 420  # two engines on a shared 2-core machine


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory, start_serve):
    s = start_serve(["--model", str(tiny_model), "--engines", "2", "--slo-ttft", "0.1", "--slo-tpot", "0.1",
                     "--", "--max-model-len", "1024", "--enforce-eager", "--dtype", "bfloat16"],
                    tmp_path_factory.mktemp("serve"),
                    env={"VLLM_SERVER_DEV_MODE": "1"})  # the engines' /reset_prefix_cache, for the prefix test  # fmt: skip
    with s.serving(START_TIMEOUT_S):
        yield s


@pytest.fixture
def client(served):
    c = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield c
    c.close()


def _idle(served) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        st = served.status()
        if st["in_flight"] == 0 and all(i["num_running"] == i["num_waiting"] == 0 for i in st["instances"]):
            return
        time.sleep(0.1)
    raise AssertionError(f"coordinator not idle: {served.status()}")


# ---------------------------------------------------------------------------------------


def test_openai_completions(served, client):
    r = client.completions.create(model=served.model, prompt="Once upon a time", max_tokens=8,
                                  extra_body={"ignore_eos": True})  # fmt: skip
    assert r.object == "text_completion" and len(r.choices) == 1 and r.choices[0].text
    assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"

    r = client.completions.create(model=served.model, prompt=["one two", "three four five"], max_tokens=5, n=2,
                                  temperature=0.8, seed=1, extra_body={"ignore_eos": True})  # fmt: skip
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3] and r.usage.completion_tokens == 20

    chunks = list(client.completions.create(model=served.model, prompt="hello", max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert "".join(c.choices[0].text for c in chunks[:-1]) and all(c.usage is None for c in chunks[:-1])

    # Without include_usage the client gets no usage-only chunk (choices[0] always works).
    chunks = list(client.completions.create(model=served.model, prompt="hello", max_tokens=6, stream=True,
                                            extra_body={"ignore_eos": True}))  # fmt: skip
    assert all(c.choices for c in chunks) and chunks[-1].choices[0].finish_reason == "length"

    # Greedy output through the coordinator equals the stop-string-free text.
    a = client.completions.create(model=served.model, prompt="abc", max_tokens=10, temperature=0,
                                  extra_body={"ignore_eos": True})  # fmt: skip
    b = "".join(c.choices[0].text for c in client.completions.create(
        model=served.model, prompt="abc", max_tokens=10, temperature=0, stream=True, extra_body={"ignore_eos": True}))  # fmt: skip
    assert a.choices[0].text == b


def test_openai_chat(served, client):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    r = client.chat.completions.create(model=served.model, messages=msgs, max_tokens=7, extra_body={"ignore_eos": True})
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content and r.usage.completion_tokens == 7

    chunks = list(client.chat.completions.create(model=served.model, messages=msgs, max_completion_tokens=9,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 9
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_errors_are_openai_shaped(served, client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=served.model, prompt="x", max_tokens=100_000)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=served.model, prompt="x", max_tokens=2, temperature=-1)
    with pytest.raises(openai.BadRequestError):  # the engine's own validation, passed through
        client.completions.create(model=served.model, prompt="x", max_tokens=2, extra_body={"top_k": -5})
    r = httpx.post(served.url + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    _idle(served)


def test_vllm_benchmark_client_has_no_failures(served, tiny_model):
    from vllm.benchmarks.serve import add_cli_args, main

    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args([
        "--backend", "vllm", "--base-url", served.url, "--endpoint", "/v1/completions",
        "--model", served.model, "--tokenizer", str(tiny_model), "--dataset-name", "random",
        "--random-input-len", "32", "--random-output-len", "16", "--num-prompts", "24",
        "--request-rate", "20", "--ignore-eos", "--disable-tqdm", "--seed", "0",
        "--ready-check-timeout-sec", "60",
    ])  # fmt: skip
    result = main(args)
    assert result["failed"] == 0 and result["completed"] == 24, result
    assert result["total_output_tokens"] == 24 * 16


def test_64_concurrent_streams_exact_counts_on_both_engines(served):
    before = {i["id"]: i["routed_total"] for i in served.status()["instances"]}

    async def one(c: httpx.AsyncClient, i: int) -> int:
        want = 20 + i % 13
        body = {"model": served.model, "prompt": f"request {i} " + "word " * (i % 9), "max_tokens": want,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        usage = pieces = 0
        async with c.stream("POST", served.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    pieces += len(chunk["choices"])
                    if chunk.get("usage"):
                        usage = chunk["usage"]["completion_tokens"]
        assert usage == want and pieces >= 1
        return usage

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=100)) as c:
            return await asyncio.gather(*(one(c, i) for i in range(64)))

    got = asyncio.run(run())
    assert got == [20 + i % 13 for i in range(64)]
    after = {i["id"]: i["routed_total"] for i in served.status()["instances"]}
    per_engine = {k: after[k] - before[k] for k in after}
    assert sum(per_engine.values()) == 64
    assert all(v > 0 for v in per_engine.values()), per_engine  # rolling activation used both engines
    metrics = httpx.get(served.url + "/metrics").text
    assert 'ecoserve_requests_total{outcome="success"}' in metrics and "ecoserve_ttft_seconds_bucket" in metrics
    assert 'ecoserve_engine_phase{engine="engine-1",phase="decode"}' in metrics
    _idle(served)


def test_client_disconnect_aborts_upstream(served):
    body = {"model": served.model, "prompt": "long one", "max_tokens": 480, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=60) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n > 6:
                break  # leave mid-stream
    _idle(served)  # the coordinator forgot it
    deadline = time.time() + 20
    while time.time() < deadline:  # and the engines stopped generating it
        engines = [i["engine"] for i in served.status()["instances"]]
        if all(e["num_decoding"] == e["num_waiting"] == e["num_prefilling"] == 0 for e in engines):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(served.status())


def test_status_contract(served):
    st = served.status()
    assert st["policy"] == "ecoserve" and len(st["instances"]) == 2
    for inst in st["instances"]:
        assert {"id", "url", "phase", "num_running", "num_waiting", "macro_instance"} <= set(inst)
        assert inst["healthy"] and inst["pid"] and inst["phase"] in ("prefill", "decode")
    assert st["predictor"]["observations"] > 0  # calibrated from the engines' prefill steps
    assert httpx.get(served.url + "/openapi.json").json()["paths"]["/v1/chat/completions"]


def test_dashboard_shows_real_engines_prefill_windows(served, client):
    """The page a user opens: after requests, a prefill window of a real engine
    (its own step records) is drawn in its lane, and the policy's phase strip."""
    from ecoserve.testing.browser import Browser

    with Browser() as b:
        b.goto(served.url + "/ecoserve/dashboard")
        b.wait_for("window.ecoserveDashboard && window.ecoserveDashboard.state === 'live' "
                   "&& document.querySelectorAll('.lane').length === 2")
        b.eval("window.__before = document.querySelectorAll('.mark').length; true")

        async def burst() -> None:
            aclient = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            try:
                await asyncio.gather(*(aclient.completions.create(model=served.model, prompt="hello " * 40,
                                                                  max_tokens=16, extra_body={"ignore_eos": True})
                                       for _ in range(8)))  # fmt: skip
            finally:
                await aclient.close()

        asyncio.run(burst())
        b.wait_for("document.querySelectorAll('.mark').length >= window.__before + 8", timeout=30)
        lanes = b.wait_for("""(() => { const ls = [...document.querySelectorAll('.lane')]
            .filter(l => l.querySelector('.seg[data-kind=prefill]') && l.querySelector('.seg[data-kind=decode]'));
            return ls.length ? ls.map(l => l.dataset.engine) : null; })()""", timeout=30)
        assert set(lanes) <= {i["id"] for i in served.status()["instances"]}
        assert b.eval("document.querySelectorAll('.phase[data-phase=prefill]').length") > 0
    _idle(served)


def _first_token(served, prompt: list[int]) -> tuple[float, str]:
    """(TTFT in seconds, the engine that served it) of one streamed completion."""
    t = time.perf_counter()
    body = {"model": served.model, "prompt": prompt, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data:"):
                return time.perf_counter() - t, r.headers["x-ecoserve-engine"]
    raise AssertionError("no token")


def _engine_counter(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in {url}/metrics")


def test_a_shared_prefix_goes_to_the_engine_holding_it(served):
    """Engines started by `serve` publish their KV-cache events; the coordinator
    follows them. A burst spreads eight long prompts over both engines; each
    prompt's continuation, sent alone afterwards (when rolling activation by
    itself would keep one engine), goes to the engine holding its prefix, and
    that engine reports the prefix as a cache hit. Then the same prefix twice,
    in a row: the second's TTFT is lower (median of five pairs)."""
    import random

    _idle(served)
    rng = random.Random(15)
    prompts = [[rng.randrange(5, 1000) for _ in range(900)] for _ in range(8)]  # 7 full 128-token blocks each

    async def burst() -> list[str]:
        async with httpx.AsyncClient(timeout=120) as c:
            async def one(p: list[int]) -> str:
                r = await c.post(served.url + "/v1/completions", json={"model": served.model, "prompt": p, "max_tokens": 4})
                assert r.status_code == 200, r.text
                return r.headers["x-ecoserve-engine"]
            return await asyncio.gather(*(one(p) for p in prompts))

    holders = asyncio.run(burst())
    assert len(set(holders)) == 2, f"the burst stayed on one engine: {holders}"
    st = served.status()
    urls = {i["id"]: i["url"] for i in st["instances"]}
    assert all(i["prefix_cache"]["source"] == "kv-events" for i in st["instances"]), st["instances"]
    deadline = time.time() + 15  # the events of the last prefills are on their way
    while time.time() < deadline:
        blocks = {i["id"]: i["prefix_cache"]["blocks"] for i in served.status()["instances"]}
        if all(blocks[e] >= 7 * holders.count(e) for e in urls):
            break
        time.sleep(0.2)
    assert all(blocks[e] >= 7 * holders.count(e) for e in urls), (blocks, holders)
    _idle(served)
    for p, holder in zip(prompts, holders):
        hits = _engine_counter(urls[holder], "vllm:prefix_cache_hits_total")
        _, engine = _first_token(served, p[:880] + [3, 1, 4])
        assert engine == holder
        assert _engine_counter(urls[holder], "vllm:prefix_cache_hits_total") - hits >= 6 * 128
    routed = httpx.get(served.url + "/metrics").text
    assert 'reason="prefix"' in routed  # the policy's own account of those detours

    first, second = [], []
    for _ in range(5):
        p = [rng.randrange(5, 1000) for _ in range(1000)]
        first.append(_first_token(served, p)[0])
        time.sleep(0.3)  # its blocks' events reach the coordinator
        second.append(_first_token(served, p[:960] + [2, 7])[0])
    assert statistics.median(second) < statistics.median(first), (first, second)
    _idle(served)

    # The engines clear their caches. vLLM publishes AllBlocksCleared with an engine's next
    # step, so the engine that takes the next request (shorter than a block: nothing new to
    # cache) empties its index; the engines' own counters agree: what they held is no hit now.
    for u in urls.values():
        assert httpx.post(u + "/reset_prefix_cache", timeout=30).status_code == 200
    _, stepped = _first_token(served, [5, 6, 7])
    deadline = time.time() + 15
    while time.time() < deadline:
        blocks = {i["id"]: i["prefix_cache"]["blocks"] for i in served.status()["instances"]}
        if blocks[stepped] == 0:
            break
        time.sleep(0.2)
    assert blocks[stepped] == 0, (stepped, blocks)
    assert served.status()["instances"][0]["prefix_cache"]["lost_batches"] == 0
    held = [p for p, h in zip(prompts, holders) if h == stepped]
    hits = sum(_engine_counter(u, "vllm:prefix_cache_hits_total") for u in urls.values())
    _first_token(served, held[0][:880] + [2, 7, 1])
    assert sum(_engine_counter(u, "vllm:prefix_cache_hits_total") for u in urls.values()) == hits  # none held it
    _idle(served)


def test_zz_sigterm_stops_every_engine(served):
    pids = [i["pid"] for i in served.status()["instances"]]
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=90) == 0, served.output()
    # Each engine's whole process group (API server, EngineCore, workers) is gone. Zombies
    # do not count: an orphan's zombie waits for init to reap it and holds nothing.
    assert not [pid for pid in pids if group_alive(pid)]
