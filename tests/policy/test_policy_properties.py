"""Properties of the policy core under arbitrary event sequences (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ecoserve.policy import (
    MitosisConfig,
    Queued,
    Routed,
    grow_target,
    shrink_victim,
    structural,
    Split,
    Merge,
)
from tests.policy.helpers import macro, overall, req

# One step of a random run: (kind, time advance, a, b)
steps = st.lists(
    st.tuples(
        st.sampled_from(["submit", "submit", "tokens", "step", "finish", "tick", "fail", "remove"]),
        st.floats(min_value=0.0, max_value=0.5),
        st.integers(min_value=0, max_value=2000),
        st.integers(min_value=1, max_value=60),
    ),
    max_size=80,
)


def run(router, script, on_routed=None, prefix="r", blocks=None):
    """Drive a router with a random script; returns all actions in order.
    ``blocks(prompt_tokens, b)``: the request's prompt blocks (default: none)."""
    now, k, log = 0.0, 0, []
    live: list[str] = []
    for kind, dt, a, b in script:
        now += dt
        if kind == "submit":
            r = req(f"{prefix}{k}", prompt=a, out=b, at=now)
            if blocks is not None:
                r.blocks = blocks(a, b)
            k += 1
            out = router.submit(r, now)
            live.append(r.id)
        elif kind == "tokens" and live:
            out = router.on_tokens(live[a % len(live)], 1 + b % 8, now)
        elif kind == "step" and live:  # one engine step: several requests progress at once
            out = router.on_progress([(live[(a + j) % len(live)], 1 + (b + j) % 3) for j in range(1 + b % 4)], now)
        elif kind == "finish" and live:
            out = router.on_finish(live.pop(a % len(live)), now)
        elif kind == "fail" and len(router.instances()) > 1 and a % 7 == 0:
            out = router.fail_instance(router.instances()[b % len(router.instances())].id, now)
        elif kind == "remove" and len(router.instances()) > 1 and a % 5 == 0:
            out = router.remove_instance(router.instances()[b % len(router.instances())].id, now)
        else:
            out = router.tick(now)
        for act in out:
            if isinstance(act, Routed) and on_routed:
                on_routed(router, act, now)
        log += [(now, act) for act in out]
        for inst in router.instances():
            assert_aggregates_exact(inst)
    return log


def assert_aggregates_exact(inst):
    """The O(1) running aggregates equal a recomputation from scratch."""
    window, dec = inst.window(), inst.decoding()
    pool = inst.prefix.block_tokens * len(inst.pooled) if inst.prefix is not None else 0
    assert inst.kv_reserved == sum(r.kv_reserved for r in inst.requests.values()) + pool
    users = {}
    for r in inst.requests.values():
        for b in r.pooled:
            users[b] = users.get(b, 0) + 1
    assert users == inst.pooled  # every pooled block counts exactly the requests sharing it
    assert inst.window_size == len(window)
    assert inst.window_unstarted == sum(1 for r in window if not r.started)
    assert abs(inst.window_pred - sum(r.predicted_prefill for r in window)) < 1e-9
    assert inst.dec_n == len(dec)
    assert inst.dec_tokens == sum(r.tokens_out for r in dec)
    assert abs(inst.dec_tfirst - sum(r.first_token_at for r in dec)) < 1e-6
    assert inst.kv_used == sum(r.prompt_tokens + r.tokens_out for r in inst.requests.values())
    if dec:  # the cached least slack equals a fresh minimum
        assert abs(inst.min_slack(0.0, 0.1) - min(r.saved_tpot(0.0, 0.1) for r in dec)) < 1e-6


def check_constraints_at_routing(router, act, now):
    """Re-derive Algorithm 1 for the placed request from the state it left."""
    c = router.checker
    inst = next(i for i in router.instances() if i.id == act.instance_id)
    r = inst.requests[act.request_id]
    predict = c.predictor.predict
    # Memory: reservations never exceed capacity.
    assert inst.kv_reserved <= inst.kv_capacity_tokens
    # TTFT: the window's predicted prefill total is within the SLO unless r is alone.
    window = inst.window()
    assert r in window
    total = sum(predict(w.prompt_tokens) for w in window)
    assert len(window) == 1 or total <= c.slo.ttft + 1e-9
    # TPOT: decoders' slack covers the stall still to come, in the checked mode.
    dec = inst.decoding()
    if dec:
        prior = total - predict(r.prompt_tokens)
        stall = max(0.0, prior - (now - inst.window_start)) + predict(r.prompt_tokens)
        slacks = [d.saved_tpot(now, c.slo.tpot) for d in dec]
        agg = sum(slacks) / len(slacks) if c.slack_mode == "mean" else min(slacks)
        assert agg >= stall - 1e-9


@settings(max_examples=300, deadline=None)
@given(script=steps, mode=st.sampled_from(["mean", "min"]), n=st.integers(1, 4))
def test_routed_requests_satisfy_the_checked_constraints(script, mode, n):
    m = macro(n=n, capacity=3000, mode=mode)
    run(m, script, on_routed=check_constraints_at_routing)


@settings(max_examples=300, deadline=None)
@given(script=steps, n=st.integers(1, 3))
def test_shared_prompt_blocks_are_reserved_once_and_released_with_their_last_user(script, n):
    """Prompts of three families share their leading 64-token blocks; a family's
    blocks are pooled once the first of them started, and the pool empties as
    its users leave (assert_aggregates_exact checks the counts after every event)."""
    from ecoserve.policy.prefix_index import PrefixIndex

    m = macro(n=n, capacity=3000)
    for inst in m.instances():
        inst.prefix = PrefixIndex(100, 64)

    def blocks(prompt: int, b: int) -> tuple[int, ...]:
        family = b % 3
        return tuple(hash((family, i)) for i in range(prompt // 64))

    run(m, script, on_routed=lambda router, act, now: assert_capacity(router, act), blocks=blocks)
    for _ in range(100):  # finish everything, including what finishing lets in from the queue
        live = [rid for inst in m.instances() for rid in inst.requests]
        if not live:
            break
        for rid in live:
            m.on_finish(rid, 100.0)
    for inst in m.instances():
        assert not inst.requests and inst.kv_reserved == 0 and inst.pooled == {}


def assert_capacity(router, act):
    inst = next(i for i in router.instances() if i.id == act.instance_id)
    assert inst.kv_reserved <= inst.kv_capacity_tokens


@settings(max_examples=300, deadline=None)
@given(script=steps)
def test_pending_requests_leave_the_queue_in_fifo_order(script):
    m = macro(n=2, capacity=3000)
    log = run(m, script)
    queued = [a.request_id for _, a in log if isinstance(a, Queued)]
    routed_from_queue = [a.request_id for _, a in log if isinstance(a, Routed) and a.request_id in set(queued)]
    # Failed instances send their unstarted requests back to the head, which may
    # legitimately reorder; compare only runs without failures.
    if not any(kind == "fail" for kind, *_ in script):
        order = {rid: k for k, rid in enumerate(queued)}
        ranks = [order[r] for r in routed_from_queue]
        assert ranks == sorted(ranks)


@settings(max_examples=300, deadline=None)
@given(script=steps)
def test_cyclic_order_starts_at_the_previous_taker(script):
    m = macro(n=4, capacity=3000)
    names = [i.id for i in m.instances()]
    state = {"prev": 0}
    checker = m.checker

    def on_routed(router, act, now):
        order = [i.id for i in router.instances()]
        if order != names:  # failures/removals reshuffle: restart the reference
            return
        r = router.request(act.request_id)
        chosen = order.index(act.instance_id)
        k = state["prev"]
        while k != chosen:  # every instance skipped before the chosen one had to fail
            inst = router.instance(order[k])
            if inst.accepting:
                assert not checker.check(inst, r, now).ok
            k = (k + 1) % len(order)
        state["prev"] = chosen

    run(m, script, on_routed=on_routed)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 10**6)), max_size=120),
    nl=st.integers(1, 6),
    extra=st.integers(0, 6),
)
def test_layout_stays_within_bounds_and_loses_nothing(ops, nl, extra):
    nu = 2 * nl - 1 + extra
    cfg = MitosisConfig(macro_min=nl, macro_max=nu, max_instances=10**6)
    layout: list[list[str]] = []
    alive: set[str] = set()
    k = 0
    for grow, seed in ops:
        if grow:
            idx = grow_target(layout, cfg)
            if idx == len(layout):
                layout.append([])
            layout[idx].append(f"e{k}")
            alive.add(f"e{k}")
            k += 1
        elif alive:
            load = {iid: (hash(iid) ^ seed) % 5 for iid in alive}
            victim = shrink_victim(layout, cfg, load)
            for g in layout:
                if victim in g:
                    g.remove(victim)
            alive.discard(victim)
        layout = [g for g in layout if g]
        while (fix := structural(layout, cfg)) is not None:
            if isinstance(fix, Split):
                g = layout[fix.macro]
                layout[fix.macro : fix.macro + 1] = [g[: len(g) // 2], g[len(g) // 2 :]]
            else:
                assert isinstance(fix, Merge)
                layout[fix.into] += layout[fix.other]
                del layout[fix.other]
        flat = [i for g in layout for i in g]
        assert sorted(flat) == sorted(alive) and len(flat) == len(set(flat))
        assert all(len(g) <= nu for g in layout)
        assert sum(1 for g in layout if len(g) < nl) <= 1


@settings(max_examples=150, deadline=None)
@given(script=steps, splits=st.lists(st.integers(0, 3), max_size=6))
def test_split_and_merge_on_the_scheduler_keep_every_request(script, splits):
    s = overall(sizes=(4,), capacity=3000)
    run(s, script[: len(script) // 2])
    for x in splits:
        held = {(r.id, i.id) for i in s.instances() for r in i.requests.values()}
        pending = [r.id for r in s.pending()]
        count = len(s.instances())
        if x % 2 == 0 and any(len(g) >= 2 for g in s.layout(include_draining=True)):
            idx = max(range(len(s.macros)), key=lambda j: len(s.macros[j].instances()))
            s.split(idx, 100.0)
        elif len(s.macros) >= 2:
            s.merge(0, 1, 100.0)
        now_held = {(r.id, i.id) for i in s.instances() for r in i.requests.values()}
        assert held <= now_held  # nothing moved off its instance
        # A merge may route pending requests; none is dropped.
        assert set(pending) <= {r.id for r in s.pending()} | {rid for rid, _ in now_held}
        ids = [i.id for i in s.instances()]
        assert len(ids) == len(set(ids)) == count
    run(s, script[len(script) // 2 :], prefix="late")


def check_trickle_at_routing(router, act, now):
    """A trickled request was placed where its first token comes within the TTFT
    SLO and the decoders' least slack pays for every step past their TPOT."""
    import itertools
    import math

    inst = next(i for i in router.instances() if i.id == act.instance_id)
    r = inst.requests[act.request_id]
    assert inst.kv_reserved <= inst.kv_capacity_tokens
    if not r.trickled:
        return
    tpot, steps = router.checker.slo.tpot, router.steps
    chunk = max(1, router.trickle_budget - inst.dec_n)
    kv = max(0, inst.kv_used - inst.trickle_tokens)
    k = math.ceil(inst.trickle_tokens / chunk)  # r's tokens are in trickle_tokens now
    # every step a full chunk but the last, which takes what is left
    times = [steps.step_time(chunk, inst.dec_n, kv)] * (k - 1)
    times.append(steps.step_time(inst.trickle_tokens - (k - 1) * chunk, inst.dec_n, kv))
    assert sum(times) <= router.checker.slo.ttft + 1e-9
    dec = inst.decoding()
    if dec:  # the least slack covers how far behind the TPOT the steps fall, at every step
        behind = max(itertools.accumulate(t - tpot for t in times))
        if behind > 0:  # else every step is within the TPOT: nobody's token is late
            assert min(d.saved_tpot(now, tpot) for d in dec) >= behind - 1e-9


@settings(max_examples=300, deadline=None)
@given(script=steps, n=st.integers(1, 4), budget=st.sampled_from([16, 64, 256]))
def test_trickled_requests_keep_the_ttft_slo_and_the_decoders_tpot(script, n, budget):
    from ecoserve.policy import SLO, ConstraintChecker, InstanceState
    from ecoserve.policy.step_time import DecodeStepModel, StepTimePredictor
    from ecoserve.policy.trickle import TrickleMacroInstance
    from tests.policy.helpers import linear_predictor

    steps_ = StepTimePredictor(linear_predictor(), DecodeStepModel((0.02, 1e-3, 0.0)))
    m = TrickleMacroInstance(ConstraintChecker(SLO(1.0, 0.1), steps_.prefill), steps_, budget)
    for i in range(n):
        m.add_instance(InstanceState(f"i{i}", 3000), 0.0)
    run(m, script, on_routed=check_trickle_at_routing)
