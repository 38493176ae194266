"""``ecoserve serve``: engines + coordinator + OpenAI API, in one command.

    ecoserve serve --model PATH --engines 2 -- --max-model-len 2048
    ecoserve serve --engine-url http://10.0.0.5:8000 --engine-url http://10.0.0.6:8000

Order of events: bind the API port (fail fast if taken), start the engines and
wait until healthy (a clear error with the failing engine's log tail if one
does not come up), serve, and on Ctrl-C / SIGTERM / SIGHUP: refuse new requests (503, and
/health 503 so load balancers stop sending), let those in flight finish for up
to ``--shutdown-grace`` seconds, stop the engines, exit 0; a second signal
stops at once. The signals are ours alone (uvicorn's handlers are off), so a
signal during the engines' start-up also stops them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Generator
from pathlib import Path

import click

from ecoserve.cli.http_options import HttpOptions, VllmCommand, http_options
from ecoserve.cli.options import policy_options
from ecoserve.cli.progress import Progress, quiet_option
from ecoserve.policy.config import SERVE_POLICIES
from vllm_plugin import SCHEDULER_CLS

GRACEFUL_S = 5.0


def _coeffs(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        a, b, c = (float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter("expected three numbers A,B,C (seconds = A + B*n + C*n^2)") from None
    return a, b, c


def _profile_points(path: str) -> tuple[tuple[tuple[int, float], ...], tuple[tuple[int, int, float], ...]]:
    """A measured profile's prefill points, as the simulator's predictor reads
    them, and its decode grid (batch, context tokens, seconds), read once."""
    from ecoserve.policy import PolicyConfig
    from ecoserve.workload import EngineProfile

    try:
        prof = EngineProfile.load(path)
        if not prof.prefill:
            raise ValueError("has no prefill points")
        return PolicyConfig.points_of(prof.prefill), tuple(prof.decode_points())
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--profile") from None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _ensure_model(path: str, size: str) -> None:
    from ecoserve.models import make_model, model_matches

    p = Path(path)
    if model_matches(p, size) or (p / "config.json").is_file():
        return
    click.echo(f"model: generating a random-weight {size} model into {p} ...")
    make_model(p, size=size, force=True)


@click.command("serve", cls=VllmCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", type=click.Path(), help="Model directory (or hub name) to start local engines for.")
@click.option(
    "--served-model-name",
    "served_model_name",
    multiple=True,
    metavar="NAME [NAME ...]",
    help="The model name(s) of the API, as vLLM's: requests may use any, replies and /v1/models report the first. "
    "Default: the engines' own (the model path, or what attached engines report).",
)
@click.option(
    "--engines",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Local engines to start (each on its own cores, or its own GPUs).",
)
@click.option(
    "--engine-url",
    "engine_urls",
    multiple=True,
    metavar="URL",
    help="Attach to a running vLLM engine started with VLLM_PLUGINS=ecoserve and "
    f"--scheduler-cls {SCHEDULER_CLS} (repeatable). Instead of --model.",
)
@click.option(
    "--launcher",
    "launcher_kind",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where engines for --model run. local: child processes on this machine. ray: Ray actors on a "
    "cluster, each on a node with room (TP x PP GPUs, or cores); needs `pip install 'ecoserve[ray]'` on every "
    "node. See the README, 'Many machines (Ray)'.",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDR",
    help="With --launcher ray: the cluster to use, HOST:PORT of `ray start --head` (or auto). "
    "Default: start a local Ray instance.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve the API on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--policy",
    type=click.Choice(SERVE_POLICIES),
    default="ecoserve",
    show_default=True,
    help="ecoserve: SLO-aware routing with rolling prefill/decode phases. round-robin, least-loaded: "
    "baselines; engines run stock vLLM scheduling (phase mixed). ecoserve-trickle (experimental): "
    "engines rest in chunked prefill (--chunk-size tokens a step); a prompt opens a prefill window "
    "only where chunking it would miss the TTFT SLO.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(16),
    default=128,
    show_default=True,
    metavar="TOKENS",
    help="--policy ecoserve-trickle: tokens per step of a chunked engine, its decodes included (Sarathi's "
    "budget; the engines' --max-num-batched-tokens stays their ceiling). 128 is the simulator's best "
    "static budget on L20 GPUs; on slow engines (CPU) a smaller one keeps TPOT.",
)
@click.option(
    "--slo-ttft",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Time-to-first-token SLO, seconds.",
)
@click.option(
    "--slo-tpot",
    type=click.FloatRange(min=0, min_open=True),
    default=0.1,
    show_default=True,
    help="Time-per-output-token SLO, seconds.",
)
@click.option(
    "--api-key",
    envvar="ECOSERVE_API_KEY",
    multiple=True,
    metavar="KEY [KEY ...]",
    help="Require 'Authorization: Bearer KEY' on /v1 and /ecoserve, one of these keys (env ECOSERVE_API_KEY, "
    "space-separated). /health stays open.",
)
@click.option(
    "--prefill-coeffs",
    callback=_coeffs,
    default=None,
    metavar="A,B,C",
    help="Initial prefill-time model, seconds = A + B*n + C*n^2 for an n-token prompt. Default "
    "0.01,0.001,0: a conservative linear guess, corrected online (x0.2..x5) from the engines' "
    "prefill step times.",
)
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Seed the prefill-time model from an engine profile (`ecoserve profile --out FILE`): its prefill "
    "points, interpolated (as `ecoserve simulate --model PROFILE` does). Instead of --prefill-coeffs.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where local engines run; auto: GPUs if NVML sees any.",
)
@click.option(
    "--cpu-kv-cache-gib",
    type=click.IntRange(min=1),
    default=None,
    help="KV cache per CPU engine in GiB (VLLM_CPU_KVCACHE_SPACE). Default: a third of free memory, shared.",
)
@click.option(
    "--tokenizer",
    default=None,
    help="Tokenizer directory for prompt token counts (default: the model's; in attach mode the engines' /tokenize).",
)
@click.option("--engine-api-key", default=None, help="API key the attached engines require.")
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Engine logs (default ~/.cache/ecoserve/logs/<time>-<pid>).",
)
@click.option(
    "--startup-timeout", type=float, default=600.0, show_default=True, help="Seconds for engines to become healthy."
)
@click.option(
    "--max-pending",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Requests allowed to wait for an engine; beyond it, 429.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1024),
    default=16 * 1024 * 1024,
    show_default=True,
    help="Largest request body accepted; beyond it, 413.",
)
@click.option(
    "--generate-model",
    type=click.Choice(["tiny", "small"]),
    default=None,
    help="If --model PATH holds no model, first write a random-weight one of this size there.",
)
@click.option(  # any case: vLLM's --log-level is upper case
    "--log-level", type=click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False),
    default="info", show_default=True,
)  # fmt: skip
@click.option(
    "--min-engines",
    type=click.IntRange(min=1),
    default=None,
    help="Autoscaling: never fewer engines than this (default: --engines).",
)
@click.option(
    "--max-engines",
    type=click.IntRange(min=1),
    default=None,
    help="Autoscaling: never more engines than this. Autoscaling (mitosis) is on when it exceeds --min-engines; "
    "local engines' cores or GPUs are planned for this many.",
)
@click.option(
    "--macro-min", type=click.IntRange(min=1), default=1, show_default=True,
    help="N_l: the fewest engines a macro instance keeps (below it, it merges or is the partial one).",
)
@click.option(
    "--macro-max", type=click.IntRange(min=1), default=8, show_default=True,
    help="N_u: the most engines in a macro instance; one more splits it in two.",
)
@click.option(
    "--scale-cooldown", type=click.FloatRange(min=0), default=30.0, show_default=True,
    help="Seconds after a scale action before the next (no flapping).",
)
@click.option(
    "--scale-in-hold", type=click.FloatRange(min=0), default=30.0, show_default=True,
    help="Seconds the fleet must look over-provisioned before an engine is drained.",
)
@click.option(
    "--ttft-window", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
    help="Seconds of first-token times the scale-out trigger averages (mean TTFT > SLO: add an engine).",
)
@click.option(
    "--replace-failed/--no-replace-failed", default=True, show_default=True,
    help="Start a new local engine in place of one that died or hung.",
)
@click.option(
    "--shutdown-grace",
    "--shutdown-timeout",  # vLLM's name for the same wait
    "shutdown_grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="On SIGTERM/SIGINT: refuse new requests (503; /health 503) and let those in flight finish for up "
    "to this long, then stop the engines. A second signal stops at once.",
)
@click.option(
    "--prefix-routing/--no-prefix-routing",
    "prefix_routing",
    default=True,
    show_default=True,
    help="Follow what each engine's prefix cache holds (its vLLM KV-cache events; engines started here publish "
    "them on a local ipc:// socket, hashed with sha256_cbor) and prefer, inside the SLO check, the engine holding "
    "the longest prefix of a prompt. Engines without prefix caching are not tracked.",
)
@click.option(
    "--kv-events/--no-kv-events",
    "kv_events",
    default=True,
    show_default=True,
    help="With --prefix-routing: follow the engines' KV-cache events where they publish them (exact, evictions "
    "included). --no-kv-events: estimate each engine's cache from the prompts routed there (LRU, bounded by its "
    "KV blocks), as for engines without events.",
)
@click.option(
    "--lost-yield/--no-lost-yield",
    "lost_yield",
    default=False,
    show_default=True,
    help="ecoserve, ecoserve-trickle: a queued request whose TTFT is already lost (past due even if prefilled now) "
    "waits behind the ones that can still meet theirs; it is still served, once none of them waits. More requests "
    "meet the SLO past the knee; the lost ones wait longer, without bound under sustained overload "
    "(see --lost-yield-max-wait).",
)
@click.option(
    "--lost-yield-max-wait",
    "lost_yield_max_wait",
    type=click.FloatRange(min=0),
    default=None,
    help="With --lost-yield: a lost request stops yielding once it has waited this many seconds past its TTFT SLO, "
    "and takes its place in arrival order again (default: no bound).",
)
@quiet_option(short=False, legacy=False, help="No engine start-up progress (engines healthy / total) on stderr.")
@policy_options
@http_options
@click.argument("engine_args", nargs=-1, type=click.UNPROCESSED)
def serve(model, engines, engine_urls, launcher_kind, ray_address, host, port, policy, chunk_size, slo_ttft, slo_tpot,
          api_key,
          prefill_coeffs, profile_path, slack_mode, output_reservation, decode_margin_s, device,
          cpu_kv_cache_gib, tokenizer, engine_api_key, log_dir, startup_timeout, max_pending, max_body_bytes,
          generate_model, log_level, min_engines, max_engines, macro_min, macro_max, scale_cooldown, scale_in_hold,
          ttft_window, replace_failed, shutdown_grace, engine_args, served_model_name, http, quiet,
          prefix_routing, kv_events, lost_yield, lost_yield_max_wait) -> None:  # fmt: skip
    """Serve an OpenAI-compatible API (/v1/completions, /v1/chat/completions,
    /v1/models, /health, /metrics, /ecoserve/status) over vLLM engines
    scheduled by EcoServe. Arguments after -- go to every local vLLM engine
    (e.g. -- --max-model-len 2048 --tensor-parallel-size 2 --enforce-eager)."""
    if (model is None) == (not engine_urls):
        raise click.UsageError("give --model PATH (start engines) or --engine-url URL (attach), not both")
    if engine_urls and engine_args:
        raise click.UsageError("engine arguments after -- apply to local engines only (--model)")
    if warning := http.cleartext_key_warning(host, api_key):
        click.echo(warning, err=True)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if generate_model and model:
        _ensure_model(model, generate_model)
    if model and model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
        raise click.ClickException(f"model directory {model} does not exist "
                                   "(--generate-model tiny writes a random-weight test model there)")  # fmt: skip
    from ecoserve.live import Coordinator
    from ecoserve.policy import SLO, PolicyConfig

    if profile_path and prefill_coeffs:
        raise click.UsageError("give --profile or --prefill-coeffs, not both")
    if lost_yield_max_wait is not None and not lost_yield:
        raise click.UsageError("--lost-yield-max-wait bounds --lost-yield: give --lost-yield too")
    mitosis, autoscale = _autoscale_config(engines, min_engines, max_engines, macro_min, macro_max, scale_cooldown,
                                           scale_in_hold, ttft_window, bool(engine_urls))  # fmt: skip
    prefill_points, decode_points = _profile_points(profile_path) if profile_path else (None, None)
    try:
        config = PolicyConfig(
            policy, SLO(slo_ttft, slo_tpot), slack_mode=slack_mode, output_reservation=output_reservation,
            decode_margin_s=decode_margin_s, mitosis=mitosis, autoscale=autoscale,
            prefill_points=prefill_points, prefill_coeffs=prefill_coeffs, trickle_budget=chunk_size,
            decode_points=decode_points if policy == "ecoserve-trickle" else None, lost_yield=lost_yield,
            lost_yield_max_wait=lost_yield_max_wait,
        )  # fmt: skip
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    sock = _bind(host, port)
    launcher = _ray_launcher(launcher_kind, ray_address, model, engine_args, device, log_dir, cpu_kv_cache_gib)
    coord = Coordinator(
        model, engines=engines, engine_urls=engine_urls, config=config, engine_args=list(engine_args),
        device=device, log_dir=log_dir, startup_timeout=startup_timeout, tokenizer=tokenizer,
        engine_api_key=engine_api_key, max_pending=max_pending, cpu_kv_cache_gib=cpu_kv_cache_gib,
        max_engines=max_engines, replace_failed=replace_failed, launcher=launcher, served_model_name=served_model_name,
        prefix_routing=prefix_routing, kv_events=kv_events,
    )  # fmt: skip
    try:
        code = _run(_main(coord, sock, api_key, max_body_bytes, log_level, shutdown_grace, http, quiet=quiet))
    finally:
        sock.close()
    sys.exit(code)


def _ray_launcher(kind, address, model, engine_args, device, log_dir, cpu_kv_cache_gib):
    """The Ray launcher for --launcher ray (None: the coordinator's local one)."""
    if kind != "ray":
        if address:
            raise click.UsageError("--ray-address needs --launcher ray")
        return None
    if model is None:
        raise click.UsageError("--launcher ray starts engines for --model; attached engines (--engine-url) need none")
    from ecoserve.engine.ray_launcher import RayLauncher, RayUnavailableError
    from ecoserve.engine.resources import PlacementError

    if Path(model).expanduser().exists():  # the same absolute path on every node
        model = str(Path(model).expanduser().resolve())
    extra_env = {"VLLM_CPU_KVCACHE_SPACE": str(cpu_kv_cache_gib)} if cpu_kv_cache_gib else {}
    try:
        return RayLauncher(model, engine_args, address=address, device=device, log_dir=log_dir, extra_env=extra_env)
    except (RayUnavailableError, PlacementError, ValueError) as e:
        raise click.ClickException(str(e)) from None


def _autoscale_config(engines, min_engines, max_engines, macro_min, macro_max, cooldown, hold, window, attached):
    """The mitosis planner's settings (N_l and N_u hold even without
    autoscaling: they lay out the starting engines), and whether autoscaling is
    on (when --max-engines exceeds --min-engines)."""
    from ecoserve.policy import MitosisConfig

    lo = min_engines or engines
    hi = max_engines or max(engines, lo)
    if not lo <= engines <= hi:
        raise click.UsageError(f"need --min-engines ({lo}) <= --engines ({engines}) <= --max-engines ({hi})")
    on = hi > lo
    if on and attached:
        raise click.UsageError("autoscaling launches engines: use --model, not --engine-url")
    try:
        return MitosisConfig(macro_min=macro_min, macro_max=macro_max, min_instances=lo, max_instances=hi,
                             ttft_window_s=window, cooldown_s=cooldown, scale_in_hold_s=hold), on  # fmt: skip
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _run(coro) -> int:
    try:
        import uvloop  # the relay's throughput is mostly event-loop overhead
    except ImportError:
        return asyncio.run(coro)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    uvloop.install()  # pragma: no cover
    return asyncio.run(coro)  # pragma: no cover


async def _main(coord, sock: socket.socket, api_key, max_body_bytes: int, log_level: str,
                shutdown_grace: float = 30.0, http: HttpOptions | None = None, *,
                quiet: bool = False) -> int:  # fmt: skip
    import uvicorn

    from ecoserve.engine.launcher import EngineStartError
    from ecoserve.server.app import create_app

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:  # signals are ours (see module doc)
            yield

        def install_signal_handlers(self) -> None:  # older uvicorn spelling
            pass

    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()  # the first signal, a second one
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        if len(received) == 1:
            print(f"\n{sig.name}: shutting down ...", file=sys.stderr, flush=True)
        elif len(received) == 2:
            print(f"{sig.name}: stopping now (requests in flight are aborted)", file=sys.stderr, flush=True)
            hurry.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig)

    kind = coord.launcher.name if coord.launcher is not None else "local"
    where = f"{coord.n_engines} {kind} engine(s)" if coord.model_path else f"{len(coord.engine_urls)} attached engine(s)"
    print(f"ecoserve: starting {where} (policy {coord.policy}); engine logs in {coord.log_dir}", flush=True)
    bar = Progress("engines", "healthy", coord.n_engines, quiet=quiet)  # launched engines only (attached: silent)
    starting = asyncio.create_task(coord.start(on_progress=bar))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
    bar.close()
    if not starting.done():
        starting.cancel()  # start() stops whatever it launched
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        print("ecoserve: stopped", file=sys.stderr, flush=True)
        return 130 if received and received[0] == "SIGINT" else 143
    try:
        starting.result()
    except (EngineStartError, RuntimeError, ValueError, OSError) as e:
        stopper.cancel()
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1

    http = http or HttpOptions()
    app = create_app(coord, api_key=api_key, max_body_bytes=max_body_bytes, cors=http.cors)
    config = uvicorn.Config(app, log_level=http.uvicorn_level(log_level), access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_S, lifespan="off", **http.ssl)  # fmt: skip
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    base = f"{http.scheme}://{shown}:{port}"
    for inst in coord.status()["instances"]:
        print(f"  {inst['id']}: {inst['url']}" + (f" (pid {inst['pid']})" if inst["pid"] else ""), flush=True)
    print(
        f"ecoserve: ready. Send OpenAI requests to {base}/v1 (model {coord.served_model!r}), e.g.\n"
        f"  curl {base}/v1/completions -H 'Content-Type: application/json' "
        f'-d \'{{"prompt": "Hello", "max_tokens": 16}}\'\n'
        f"  dashboard (watch the engines take turns): {base}/ecoserve/dashboard\n"
        f"  status: {base}/ecoserve/status   metrics: {base}/metrics   docs: {base}/docs   Ctrl-C to stop",
        flush=True,
    )
    try:
        await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not serving.done() and len(received) == 1:
            left = await _drain(coord, app, serving, shutdown_grace, hurry, received[0])
            if left:  # their streams end with an error event when the engines stop
                print(f"ecoserve: {left} request(s) still in flight are aborted", file=sys.stderr, flush=True)
                server.force_exit = True
        else:
            server.force_exit = True
        app.state.stopping = True  # open dashboards' event streams end now, not at uvicorn's timeout
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(serving, GRACEFUL_S + 5)
    finally:
        stopper.cancel()
        await coord.stop()
        print("ecoserve: stopped", file=sys.stderr, flush=True)
    return 0


async def _drain(coord, app, serving: asyncio.Task, grace: float, hurry: asyncio.Event, signame: str) -> int:
    """A graceful shutdown's first half: new requests get 503 (and /health
    503), those in flight get up to ``grace`` seconds to finish. Returns how
    many are left: the grace ran out, a second signal came, or the server died."""
    app.state.draining = True
    busy = coord.status()["in_flight"]
    print(f"ecoserve: draining: new requests get 503; waiting up to {grace:g}s for {busy} request(s) in flight "
          f"({signame} again to stop now)", file=sys.stderr, flush=True)  # fmt: skip
    drain = asyncio.create_task(coord.drain_requests(grace))
    hurried = asyncio.create_task(hurry.wait())
    await asyncio.wait({drain, hurried, serving}, return_when=asyncio.FIRST_COMPLETED)
    hurried.cancel()
    if drain.done():
        return drain.result()
    drain.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await drain
    return coord.status()["in_flight"]


if __name__ == "__main__":
    serve()
