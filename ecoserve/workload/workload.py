"""Workloads: timed requests with prompt and output lengths, from a dataset
name or a trace file, at any rate.

A ``WorkloadTemplate`` fixes everything except the rate (lengths and unit-rate
gaps drawn once from the seed); ``at_rate`` scales it. The simulator and the
real-engine benchmark both take their requests from here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from ecoserve.workload.arrivals import replay_times, times_from_gaps, unit_gaps
from ecoserve.workload.lengths import (
    DATASET_SLOS,
    DATASETS,
    TRACE_SLO,
    EmpiricalLengths,
    LengthDistribution,
    client_max_tokens,
    fit_to_context,
)
from ecoserve.workload.sessions import ChatSessions, chat_trace
from ecoserve.workload.traces import BLOCK_TOKENS, Trace, default_azure_path, default_mooncake_path, load_trace

DEFAULT_NUM_REQUESTS = 1000
CHAT = "chat"  # synthetic multi-turn chat with shared prefixes (sessions.py)
TRACE_ALIASES = {"azure": default_azure_path, "mooncake": default_mooncake_path}  # traces shipped in the package


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    arrival: float  # seconds from the start of the run
    prompt_tokens: int
    output_tokens: int  # the true length: the request finishes after this many
    # What its client sends as max_tokens (``client_max_tokens``); 0: the true length.
    max_tokens: int = 0
    # Hashes of its prompt's full blocks (traces.BLOCK_TOKENS tokens each): equal
    # hashes, equal prefixes. Empty: nothing known (no prefix can be reused).
    blocks: tuple[int, ...] = ()

    @property
    def max_output(self) -> int:
        return self.max_tokens or self.output_tokens


def resolve_dataset(name: str) -> tuple[str, LengthDistribution | None, Trace | None]:
    """``alpaca|sharegpt|longbench`` -> synthetic lengths; ``azure`` or a path ->
    a trace. Returns (canonical name, lengths or None, trace or None)."""
    key = str(name).lower()
    if key in DATASETS:
        return key, DATASETS[key], None
    path = TRACE_ALIASES[key]() if key in TRACE_ALIASES else Path(name)
    if not path.is_file():
        raise ValueError(
            f"unknown dataset {name!r}: use alpaca, sharegpt, longbench, azure, mooncake, "
            "or the path of an Azure CSV / Mooncake JSONL trace"
        )
    trace = load_trace(path)
    return (key if key in TRACE_ALIASES else str(path)), None, trace


def default_slo(dataset: str) -> tuple[float, float]:
    return DATASET_SLOS.get(str(dataset).lower(), TRACE_SLO)


class WorkloadTemplate:
    """Lengths and arrival shape fixed by the seed; the rate applied later.

    - synthetic datasets: ``num_requests`` pairs from the distribution, Gamma/
      Poisson gaps with CV ``burstiness``;
    - traces with ``replay=True``: the first ``num_requests`` requests (all if
      None) at their recorded times, time-scaled to the rate asked for;
    - traces with ``replay=False``: the trace as an empirical length
      distribution under Poisson/Gamma arrivals.
    ``max_context`` truncates requests longer than the model's context.
    """

    def __init__(
        self,
        dataset: str,
        *,
        num_requests: int | None = None,
        burstiness: float = 1.0,
        seed: int = 0,
        replay: bool | None = None,
        max_context: int | None = None,
    ) -> None:
        if str(dataset).lower() == CHAT:  # multi-turn sessions, generated: a trace with block hashes
            n = DEFAULT_NUM_REQUESTS if num_requests is None else num_requests
            self.name, lengths = CHAT, None
            trace = chat_trace(ChatSessions(sessions=max(20, n // 3), seed=seed)).head(n)
        else:
            self.name, lengths, trace = resolve_dataset(dataset)
        self.burstiness = burstiness
        self.seed = seed
        self.trace = trace
        self.replay = bool(trace is not None and (replay is None or replay))
        if replay and trace is None:
            raise ValueError("replay needs a trace file (azure or a path), not a synthetic dataset")
        self.max_context = max_context
        if self.replay:
            assert trace is not None
            t = trace.head(num_requests)
            self._gaps = None
            self._times = list(t.times)
            self.pairs = [fit_to_context(p, o, max_context) for p, o in t.pairs()]
            # Full blocks only, and only those the (possibly truncated) prompt keeps.
            self.blocks = ([tuple(b[: p // BLOCK_TOKENS]) for b, (p, _) in zip(t.blocks, self.pairs)]
                           if t.blocks is not None else None)  # fmt: skip
            self.output_cap = max(o for _, o in trace.pairs())
            self.truncated = sum(1 for a, b in zip(t.pairs(), self.pairs) if a != b)
        else:
            n = DEFAULT_NUM_REQUESTS if num_requests is None else num_requests
            if lengths is None:
                assert trace is not None
                lengths = EmpiricalLengths(trace.pairs(), name=self.name)
            self._lengths = lengths
            self.output_cap = lengths.output_cap
            self._len_rng = random.Random(f"{seed}:lengths")
            self._gap_rng = random.Random(f"{seed}:arrivals")
            self._gaps: list[float] = []
            self._times = None
            self.blocks = None  # lengths drawn from a distribution: no prefixes
            self.pairs: list[tuple[int, int]] = []
            self.truncated = 0
            self._extend(n)
        self.num_requests = len(self.pairs)

    def _extend(self, n: int) -> None:
        """Draw more requests; the first k are the same however far it extends."""
        k = n - len(self.pairs)
        if k <= 0:
            return
        raw = self._lengths.sample(k, self._len_rng)
        fit = [fit_to_context(p, o, self.max_context) for p, o in raw]
        self.truncated += sum(1 for a, b in zip(raw, fit) if a != b)
        self.pairs += fit
        self._gaps += unit_gaps(k, self.burstiness, self._gap_rng)

    def __len__(self) -> int:
        return self.num_requests

    @property
    def native_rate(self) -> float | None:
        """A replayed trace's own mean rate; None for synthetic arrivals."""
        if not self.replay or len(self._times) < 2 or self._times[-1] <= 0:
            return None
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])

    def count_for(self, rate: float | None, min_duration: float = 0.0) -> int:
        """Requests for a run at ``rate``: ``num_requests``, or more so that the
        arrivals span at least ``min_duration`` seconds (synthetic only)."""
        if self.replay or rate is None or min_duration <= 0:
            return self.num_requests
        return max(self.num_requests, math.ceil(rate * min_duration))

    def at_rate(self, rate: float | None, n: int | None = None) -> list[Request]:
        """The first ``n`` requests (default ``num_requests``) at ``rate`` requests/s."""
        n = self.num_requests if n is None else n
        if self.replay:
            times = replay_times(self._times, rate)[:n]
        else:
            if rate is None:
                raise ValueError("a rate is required for synthetic arrivals")
            self._extend(n)
            times = times_from_gaps(self._gaps[:n], rate)
        cap, ctx = self.output_cap, self.max_context
        blocks = self.blocks or [()] * len(self.pairs)
        return [Request(f"r{i}", t, p, o, client_max_tokens(p, o, cap, ctx), blocks[i])
                for i, (t, (p, o)) in enumerate(zip(times, self.pairs))]

    @property
    def has_blocks(self) -> bool:
        """Its requests carry prefix-block hashes (a replayed trace with them)."""
        return bool(self.blocks) and any(self.blocks)

    def mean_lengths(self) -> tuple[float, float]:
        pairs = self.pairs[: self.num_requests]
        n = len(pairs) or 1
        return sum(p for p, _ in pairs) / n, sum(o for _, o in pairs) / n


def build_workload(dataset: str, rate: float | None, **kw) -> list[Request]:
    return WorkloadTemplate(dataset, **kw).at_rate(rate)
