"""Micro-benchmark: how fast the policy core routes, on one core.

A loaded cluster (``--preload`` requests in flight per instance) driven the way the live coordinator drives it. Each
step, one request arrives and is submitted (the routing decision, timed alone
for the latency figures), and ``--events`` lifecycle events are fed back for
requests already routed: a first token, token bursts (one per engine step,
as engines report them), and finally the finish. Requests that queue are
routed later by the re-offers those events trigger, and a ``tick`` runs every
10 simulated ms, as drivers do. Arrivals come at ``--rate-per-instance``
times the cluster size.

Reported per cluster size:
- decisions/s: requests carried through their whole life (submit + every
  event + ticks) per second of policy CPU time: the request rate one core of
  coordinator can sustain;
- p50/p99 us per submit (the routing decision itself);
- how many requests were routed at once or after waiting.

    python bench/routing_decisions.py                  # 8, 64 and 512 instances
    python bench/routing_decisions.py --sizes 64 --requests 50000 --json
    python bench/routing_decisions.py --sizes 64 --prefix-blocks 100000   # with prefix-aware routing
    python bench/routing_decisions.py --sizes 64 --prefix-blocks 100000 --without-hashes   # its baseline
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import deque

from ecoserve.policy import (
    SLO,
    ConstraintChecker,
    InstanceState,
    OverallScheduler,
    PrefillTimePredictor,
    RequestState,
    Routed,
)
from ecoserve.policy.prefix_index import PrefixDirectory, PrefixIndex

# Token-burst events per request between its first token and finish; bursts of
# 20-100 tokens give ~240 output tokens a request (ShareGPT's mean).
BURSTS = 4
SESSION_BLOCKS = 32  # --prefix-blocks: cached sessions of 32 blocks (16k tokens)


def run(n: int, requests: int, macro_size: int, events: int, dt: float, preload: int, seed: int,
        prefix_blocks: int = 0, clock: str = "wall", hashes: bool = True) -> dict:  # fmt: skip
    """``hashes`` False: the same prompts and load without block hashes (and no
    prefix indexes): the decision without prefix awareness, the overhead's baseline."""
    rng = random.Random(seed)
    # ShareGPT-like scale: quadratic prefill of ~0.3 s at 340 tokens; 5 s / 100 ms SLOs.
    pred = PrefillTimePredictor(coeffs=(0.01, 8e-4, 1e-7))
    if prefix_blocks:  # prompts of 1-32 blocks, as fast to prefill as the short ones: the same load
        pred = PrefillTimePredictor(coeffs=(0.01, 2e-5, 0.0))
    sched = OverallScheduler(ConstraintChecker(SLO(5.0, 0.1), pred))
    directory = PrefixDirectory()
    for i in range(n):
        prefix = None
        if prefix_blocks and hashes:  # each instance's index full: prefix_blocks cached in all, as 32-block sessions
            prefix = PrefixIndex(-(-prefix_blocks // n), directory=directory, owner=f"i{i}")
            for s in range(-(-prefix_blocks // n) // SESSION_BLOCKS):
                prefix.insert(range((i * 10_000 + s) * 100, (i * 10_000 + s) * 100 + SESSION_BLOCKS))
        kv = 200_000 if not prefix_blocks else 2_000_000  # long prompts: KV for as many requests
        sched.add_instance(InstanceState(f"i{i}", kv, prefix=prefix), 0.0, macro=i // macro_size)
    fresh = iter(range(10**12, 10**13, 100))

    def blocks_of(prompt: int) -> tuple[int, ...]:
        """Half the requests continue a cached session (its blocks, then one new), half start one."""
        if not prefix_blocks or not hashes:
            return ()
        k = prompt // 512
        if rng.random() < 0.5:
            i, s = rng.randrange(n), rng.randrange(max(1, -(-prefix_blocks // n) // SESSION_BLOCKS))
            base = (i * 10_000 + s) * 100
            return tuple(range(base, base + min(k, SESSION_BLOCKS))) + (next(fresh),)
        start = next(fresh)
        return tuple(range(start, start + k))

    live: deque[list] = deque()  # [request id, events left] for routed requests
    routed_at_once = routed_later = 0
    submit_ns: list[int] = []
    total_ns = 0
    now, next_tick = 0.0, 0.01
    perf = time.perf_counter_ns if clock == "wall" else time.process_time_ns

    prefix_routed = [0]

    def absorb(actions) -> int:
        k = 0
        for a in actions:
            if isinstance(a, Routed):
                prefix_routed[0] += a.reason == "prefix"
                live.append([a.request_id, BURSTS + 2])
                k += 1
        return k

    # Warm up (untimed): ``--preload`` requests per instance, started and decoding.
    for k in range(preload * n):
        absorb(sched.submit(RequestState(f"w{k}", 0.0, rng.randint(20, 1000), rng.randint(20, 400)), 0.0))
    for item in list(live):
        absorb(sched.on_tokens(item[0], 1, 0.0))
        item[1] -= 1
    for r in sched.pending():  # start with an empty queue, not the warm-up's backlog
        sched.on_finish(r.id, 0.0)
    routed_at_once = routed_later = 0

    for k in range(requests):
        prompt = rng.randint(20, 1000) if not prefix_blocks else rng.randint(512, 32 * 512)
        req = RequestState(f"r{k}", now, prompt, rng.randint(20, 400), blocks=blocks_of(prompt))
        t0 = perf()
        out = sched.submit(req, now)
        dt_ns = perf() - t0
        submit_ns.append(dt_ns)
        total_ns += dt_ns
        routed_at_once += absorb(out)
        for _ in range(min(events, len(live))):
            item = live.popleft()
            rid, left = item
            t0 = perf()
            if left == 1:
                acts = sched.on_finish(rid, now)
            else:
                acts = sched.on_tokens(rid, 1 if left == BURSTS + 2 else rng.randint(20, 100), now)
            total_ns += perf() - t0
            routed_later += absorb(acts)
            if left > 1:
                item[1] = left - 1
                live.append(item)
        now += dt
        if now >= next_tick:
            t0 = perf()
            acts = sched.tick(now)
            total_ns += perf() - t0
            routed_later += absorb(acts)
            next_tick += 0.01
    submit_ns.sort()
    return {
        "instances": n,
        "requests": requests,
        "decisions_per_s": round(requests / (total_ns / 1e9)),
        "submit_p50_us": round(submit_ns[len(submit_ns) // 2] / 1e3, 2),
        "submit_p99_us": round(submit_ns[int(len(submit_ns) * 0.99)] / 1e3, 2),
        "routed_at_once": routed_at_once,
        "routed_after_waiting": routed_later,
        "still_pending": len(sched.pending()),
        "prefix_blocks": prefix_blocks,
        "routed_for_prefix": prefix_routed[0],
        "clock": clock,
        "hashes": hashes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8,64,512", help="comma-separated instance counts")
    ap.add_argument("--requests", type=int, default=20_000, help="requests per size")
    ap.add_argument("--macro-size", type=int, default=16, help="instances per macro instance (N_u)")
    ap.add_argument("--events", type=int, default=BURSTS + 2, help="lifecycle events fed back per arrival")
    ap.add_argument("--rate-per-instance", type=float, default=1.5,
                    help="arrivals per second per instance (ShareGPT-like on a 34B model: ~1-2)")
    ap.add_argument("--preload", type=int, default=16, help="requests per instance in flight at the start")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefix-blocks", type=int, default=0,
                    help="prefix-aware routing: this many 512-token blocks cached over the cluster (e.g. 100000), "
                         "half the requests continuing a cached session (issue 15's cost target)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter (what a request waits, on an idle core); cpu: this process's CPU time "
                         "(the decision's cost without the time it waits for a core on a shared host; each reading "
                         "costs about 0.2 us more)")
    ap.add_argument("--without-hashes", action="store_true",
                    help="with --prefix-blocks: the same prompts and load sent without block hashes, the baseline "
                         "that the prefix index's cost is measured against")
    ap.add_argument("--json", action="store_true", help="print one JSON object per size")
    args = ap.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        res = run(n, args.requests, args.macro_size, args.events, 1.0 / (args.rate_per_instance * n), args.preload,
                  args.seed, args.prefix_blocks, args.clock,
                  not args.without_hashes)  # fmt: skip
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print(
                f"{res['instances']:>4} instances: {res['decisions_per_s']:>8,} decisions/s  "
                f"submit p50 {res['submit_p50_us']:>6} us  p99 {res['submit_p99_us']:>7} us  "
                f"(routed at once {res['routed_at_once']}, after waiting {res['routed_after_waiting']}, "
                f"pending at end {res['still_pending']})",
                flush=True,
            )


if __name__ == "__main__":
    main()
