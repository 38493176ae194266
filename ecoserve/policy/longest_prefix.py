"""Baseline: route to the instance whose prefix cache holds the longest prefix
of the prompt; ties (no prefix anywhere, most often) least-loaded. No SLO check.

It is the yardstick of prefix-aware routing: given each instance's real cache
(the simulator hands it the engines' own, ``InstanceState.prefix``), it is the
oracle that always picks the longest cached prefix, which ``prefix-oracle``
runs in the simulator; prefill tokens computed under EcoServe's prefix routing
are compared with it. It never inserts into the caches it reads.
"""

from __future__ import annotations

from ecoserve.policy.instance import InstanceState
from ecoserve.policy.least_loaded import LeastLoadedRouter, load_score
from ecoserve.policy.request import RequestState


class LongestPrefixRouter(LeastLoadedRouter):
    def rank(self, inst: InstanceState, req: RequestState) -> tuple[float, ...]:
        return (-inst.cached_tokens(req), load_score(inst))  # the longest prefix, then the least loaded

    def reason(self, rank: tuple[float, ...]) -> str:
        return "longest_prefix" if rank[0] < 0 else "least_loaded"
