"""Fully disaggregated baselines: a prefill pool and a decode pool, KV shipped
between them after each prefill.

- DistServe-style (``scope="node"``): each node holds prefill and decode
  instances; a request's KV goes to a decode instance *in the same node*, over
  the intra-node link (PCIe on L20, NVLink on A800/H100).
- Mooncake-style (``scope="cluster"``): whole nodes are prefill or decode
  instances; KV goes to any decode instance over the network, through the
  sending node's and the receiving node's NICs.

As in the vLLM 0.7 disaggregated-prefill integrations the paper evaluated,
the transfer starts when the prefill ends (no layer-wise overlap). The first
token comes from the prefill instance (that is its TTFT); the transfer and any
wait for decode memory count against TPOT.

Routing (the baselines' own schedulers, not EcoServe's policy): a new request
goes to the prefill instance with the fewest prompt tokens queued (DistServe
and Mooncake's conductor both pick by expected TTFT; queued tokens are its
proxy); a prefilled request goes to the decode instance in scope with the
fewest requests among those with room for its whole KV (prompt + output:
reserved, so a decode instance never preempts). If none has room, it waits in
FIFO order while its KV stays on the prefill instance, which holds that
memory: back-pressure, as in the real systems.

Links are FIFO: a transfer starts when the link (both NICs, for the network)
is free, and takes ``latency + bytes / bandwidth``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from ecoserve.sim.core import Simulator
from ecoserve.sim.engine import SimEngine, SimRequest


class Link:
    __slots__ = ("name", "bytes_per_s", "latency", "free_at", "busy_s", "transfers")

    def __init__(self, name: str, bytes_per_s: float, latency: float) -> None:
        if bytes_per_s <= 0:
            raise ValueError(f"link {name}: bandwidth must be > 0")
        self.name = name
        self.bytes_per_s = bytes_per_s
        self.latency = latency
        self.free_at = 0.0
        self.busy_s = 0.0
        self.transfers = 0


def transfer(links: Sequence[Link], now: float, nbytes: float) -> float:
    """Reserve every link of a path, FIFO; returns when the bytes have arrived."""
    start = max([now] + [l.free_at for l in links])
    bw = min(l.bytes_per_s for l in links)
    lat = max(l.latency for l in links)
    dur = lat + nbytes / bw
    end = start + dur
    for l in links:
        l.free_at = end
        l.busy_s += dur
        l.transfers += 1
    return end


class FuDGDriver:
    fine_grained = False  # no router: decode segments can always fast-forward

    def __init__(
        self,
        sim: Simulator,
        prefill: Sequence[SimEngine],
        decode: Sequence[SimEngine],
        *,
        kv_bytes_per_token: int,
        scope: str,
        node_links: dict[int, list[Link]] | None = None,
    ) -> None:
        if scope not in ("node", "cluster"):
            raise ValueError("scope is 'node' (DistServe) or 'cluster' (Mooncake)")
        if not prefill or not decode:
            raise ValueError("a disaggregated cluster needs at least one prefill and one decode instance")
        self.sim = sim
        self.prefill = list(prefill)
        self.decode = list(decode)
        self.kv_bytes_per_token = kv_bytes_per_token
        self.scope = scope
        self.node_links = node_links or {}
        self._rr = 0
        # Decode instances a prefill instance may hand to, and the wait queue of each scope.
        if scope == "node":
            self._targets = {p.id: [d for d in self.decode if d.node == p.node] for p in self.prefill}
            for p in self.prefill:
                if not self._targets[p.id]:
                    raise ValueError(f"node {p.node} has a prefill instance but no decode instance")
            self._scope_of = lambda e: e.node
        else:
            self._targets = {p.id: self.decode for p in self.prefill}
            self._scope_of = lambda e: 0
        self._waiting: dict[int, deque[tuple[SimEngine, SimRequest]]] = {}
        self.max_prefill_cap = max(p.capacity for p in self.prefill)
        self.max_decode_cap = max(d.capacity for d in self.decode)
        self.counts = {"rejected": 0, "transfers": 0, "decode_waits": 0, "transfer_s": 0.0}

    def on_arrival(self, r: SimRequest, now: float) -> None:
        if r.prompt > self.max_prefill_cap or r.prompt + r.output > self.max_decode_cap:
            r.rejected = True
            self.counts["rejected"] += 1
            self.sim.note_rejected(r)
            return
        n = len(self.prefill)
        best, best_q = None, None
        for k in range(n):  # rotate the start so ties spread
            e = self.prefill[(self._rr + k) % n]
            if e.capacity < r.prompt:
                continue
            q = e.queued_prefill
            if best is None or q < best_q:
                best, best_q = e, q
        self._rr = (self._rr + 1) % n
        r.prefill_engine = best
        best.enqueue(r, now)

    def on_step(self, engine: SimEngine, kind: str, prefill_tokens: int, seconds: float, prompts: int) -> None:
        pass  # the disaggregated baselines predict nothing

    def on_tokens(self, engine, reqs, count, now) -> None:
        pass

    def on_prefilled(self, pe: SimEngine, r: SimRequest, now: float) -> None:
        if r.generated >= r.output:  # a one-token request ends at its prefill
            r.finish = now
            pe.release(r, now)
            self.sim.note_finish(r, now)
            return
        self._dispatch(pe, r, now)

    def _dispatch(self, pe: SimEngine, r: SimRequest, now: float) -> bool:
        need = r.prompt + r.output
        best, best_load = None, None
        for d in self._targets[pe.id]:
            if d.capacity - d.reserved < need:
                continue
            load = len(d.running) + d.incoming
            if best is None or load < best_load:
                best, best_load = d, load
        if best is None:
            self._waiting.setdefault(self._scope_of(pe), deque()).append((pe, r))
            self.counts["decode_waits"] += 1
            return False
        best.reserved += need
        best.incoming += 1
        r.decode_engine = best
        path = self._path(pe, best)
        end = transfer(path, now, r.prompt * self.kv_bytes_per_token) if path else now
        r.transfer_s = end - now
        self.counts["transfers"] += 1
        self.counts["transfer_s"] += end - now
        self.sim.at(end, self._arrived, (pe, best, r))
        return True

    def _path(self, pe: SimEngine, de: SimEngine) -> list[Link]:
        if self.scope == "node":
            return self.node_links.get(pe.node, [])
        return self.node_links.get(pe.node, []) + self.node_links.get(de.node, [])

    def _arrived(self, now: float, arg) -> None:
        pe, de, r = arg
        pe.release(r, now)
        de.admit_decoding(r, now)

    def on_finish(self, engine: SimEngine, r: SimRequest, now: float) -> None:
        engine.reserved -= r.prompt + r.output
        q = self._waiting.get(self._scope_of(engine))
        while q:
            pe, head = q[0]
            if not self._dispatch_queued(pe, head, now):
                break
            q.popleft()

    def _dispatch_queued(self, pe: SimEngine, r: SimRequest, now: float) -> bool:
        need = r.prompt + r.output
        if not any(d.capacity - d.reserved >= need for d in self._targets[pe.id]):
            return False
        ok = self._dispatch(pe, r, now)
        assert ok
        return True
