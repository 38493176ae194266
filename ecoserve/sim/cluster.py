"""Build a simulated cluster for a policy and run a workload through it.

Policies (the ``--policy`` names of ``ecoserve simulate``):

| name         | engines (``engine.py`` mode) | routing |
|--------------|------------------------------|---------|
| ecoserve     | ``phased`` (temporal disaggregation) | ``PolicyConfig("ecoserve")``: OverallScheduler + macro instances (Algorithm 1, rolling activation) |
| vllm         | ``vllm`` (prefill priority, separate batches) | ``LeastLoadedRouter`` (vLLM's own DP balancing) |
| sarathi      | ``sarathi`` (chunked prefill, decode priority) | ``LeastLoadedRouter`` |
| ecoserve-trickle | ``phased`` resting in ``CHUNKED`` (as ``sarathi`` at its budget), ``PREFILL`` windows | ``PolicyConfig("ecoserve-trickle")``: OverallScheduler + ``TrickleMacroInstance`` (policy/trickle.py) |
| sarathi-dyn  | ``sarathi`` whose every step's prompt budget is what the least-slack decoder can absorb (``policy.chunk_budget``), never below the static budget's | ``LeastLoadedRouter`` |
| round-robin  | ``sarathi`` at stock vLLM V1's budget (see ``stock_budget``) | ``RoundRobinRouter`` |
| least-loaded | ``sarathi`` at stock vLLM V1's budget | ``LeastLoadedRouter`` |
| distserve    | ``prefill`` + ``decode`` pools inside each node, KV over the node's link | ``FuDGDriver(scope="node")`` |
| mooncake     | whole nodes as ``prefill`` or ``decode`` instances, KV over the network | ``FuDGDriver(scope="cluster")`` |

``round-robin`` and ``least-loaded`` are what ``ecoserve serve --policy
round-robin|least-loaded`` runs: stock vLLM V1 engines, whose scheduler puts
prompt chunks into decode steps within ``max_num_batched_tokens``. ``vllm``
stays the paper's baseline (prefill priority, separate batches).

GPU budget: ``instances`` nodes, each using ``tp`` GPUs (the paper runs one
instance per node). NoDG and EcoServe run one TP=``tp`` instance per node;
DistServe splits each node's ``tp`` GPUs into prefill and decode instances of
smaller TP (every layout whose weights fit is a candidate); Mooncake assigns
whole nodes to prefill or decode (every P:D split is a candidate). Baselines
get their best configuration: ``candidates()`` lists the variants and the
runner keeps the best (``runner.py``).

Mitosis autoscaling (``autoscale=True``, EcoServe only): ``instances`` is the
starting fleet; the policy's ``MitosisPlanner`` grows and shrinks it within
[``min_instances``, ``max_instances``] and splits or merges macro instances to
keep them within [``macro_min``, ``macro_size``] (N_l, N_u); see ``autoscale.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ecoserve.policy import SLO, InstanceState, MitosisConfig, PolicyConfig
from ecoserve.policy.chunk_budget import ChunkBudgetRule
from ecoserve.policy.config import require_macros
from ecoserve.policy.prefix_index import PrefixDirectory, PrefixIndex
from ecoserve.policy.config import SIM_POLICIES as POLICIES
from ecoserve.sim.autoscale import SimAutoscaler
from ecoserve.sim.core import RouterDriver, Simulator
from ecoserve.sim.engine import SimEngine
from ecoserve.sim.engine_model import EngineModel, ProfileModel, RooflineModel
from ecoserve.sim.fudg import FuDGDriver, Link
from ecoserve.sim.specs import HARDWARE, MODELS, default_tp
from ecoserve.workload.traces import BLOCK_TOKENS

# Static budgets a chunked baseline is tried at (its best is kept). 64 and 128: under the measured
# cost model the best budget was the smallest tried (128) in every L20 cell, so smaller ones are tried too.
SARATHI_BUDGETS = (64, 128, 256, 512, 1024, 2048)
DEFAULT_TRICKLE_BUDGET = 128  # ecoserve-trickle without --chunk-size: Sarathi's best static budget on L20 (REPRODUCTION.md)

_NODG = {  # policy: (engine behaviour, router); "stock" is sarathi at stock_budget
    "vllm": ("vllm", "least-loaded"),
    "sarathi": ("sarathi", "least-loaded"),
    "sarathi-dyn": ("sarathi", "least-loaded"),  # + the slack-derived budget (ChunkBudgetRule)
    "round-robin": ("stock", "round-robin"),
    "least-loaded": ("stock", "least-loaded"),
    "prefix-oracle": ("stock", "longest-prefix"),  # reads the engines' real prefix caches
}


@dataclass(frozen=True)
class SimConfig:
    policy: str = "ecoserve"
    model: str = "codellama-34b"  # a preset name or a profile JSON path
    hardware: str = "l20"
    tp: int | None = None  # None: the preset's default for (hardware, model)
    cost_model: str = "measured"  # presets' step times: "measured" (Vidur's profiles) or "constant" (see engine_model.py)
    instances: int = 8
    slo_ttft: float = 5.0
    slo_tpot: float = 0.1
    # EcoServe
    macro_size: int = 11  # N_u: instances per macro instance at most (the paper's run used 11)
    slack_mode: str = "min"  # "mean": the paper's check (see ConstraintChecker)
    output_reservation: float = 1.0
    decode_margin_s: float = 0.0  # see ConstraintChecker: one decode step of margin on the slack
    # Baselines
    chunk_size: int | None = None  # Sarathi token budget; None: Sarathi's rule (see sarathi_budget)
    pd_ratio: tuple[int, int] | None = None  # Mooncake prefill:decode nodes; None: best of all
    distserve_layout: tuple[int, int, int, int] | None = None  # per node (n_p, tp_p, n_d, tp_d); None: best
    max_num_seqs: int = 256  # vLLM's default
    # Prefix caching (vLLM's automatic prefix caching) in every engine, every
    # policy alike; it matters only for requests with block hashes (a trace's).
    prefix_cache: bool = False
    # EcoServe's routing prefers the instance holding a request's prefix (inside
    # the constraint check); off: it routes as if prompts shared nothing.
    prefix_routing: bool = True
    # EcoServe (both): queued requests whose TTFT is lost wait behind the others (PolicyConfig.lost_yield)
    lost_yield: bool = False
    lost_yield_max_wait: float | None = None  # PolicyConfig.lost_yield_max_wait
    # Mitosis autoscaling (EcoServe only); the planner's knobs are MitosisConfig's
    autoscale: bool = False
    min_instances: int = 1
    max_instances: int = 64
    macro_min: int = 1  # N_l (N_u is macro_size)
    # The paper gives no start-up time. 30 s: CodeLlama-34B's 68 GB of BF16
    # weights read at a few GB/s (~15-20 s) plus vLLM's memory profiling and
    # CUDA-graph capture (~10-15 s).
    launch_delay_s: float = 30.0
    scale_interval_s: float = 1.0  # how often the planner is consulted
    ttft_window_s: float = 30.0
    scale_cooldown_s: float = 30.0
    scale_in_hold_s: float = 30.0
    timeline_window_s: float = 10.0  # bins of the attainment time series
    # Simulation
    fast_forward: bool = True
    tick_s: float = 0.01
    drain_limit_s: float = 1800.0
    max_ff_steps: int = 2048

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        if self.instances < 1:
            raise ValueError("instances must be >= 1")
        if self.model in MODELS and self.hardware not in HARDWARE:
            raise ValueError(f"unknown hardware {self.hardware!r}; choose from {', '.join(HARDWARE)}")
        if self.autoscale:
            require_macros(self.policy)
        if self.policy not in ("distserve", "mooncake"):
            self.policy_config()  # validates the router's settings (N_l, N_u, slack mode, ...)
        if self.autoscale:
            if not self.min_instances <= self.instances <= self.max_instances:
                raise ValueError(f"the starting {self.instances} instances must lie within "
                                 f"[min {self.min_instances}, max {self.max_instances}]")
            if self.launch_delay_s < 0 or self.scale_interval_s <= 0 or self.timeline_window_s <= 0:
                raise ValueError("need launch delay >= 0, scale interval > 0 and timeline window > 0")

    @property
    def mitosis(self) -> MitosisConfig:
        return MitosisConfig(
            macro_min=self.macro_min, macro_max=self.macro_size, min_instances=self.min_instances,
            max_instances=self.max_instances, ttft_window_s=self.ttft_window_s,
            cooldown_s=self.scale_cooldown_s, scale_in_hold_s=self.scale_in_hold_s,
        )

    def policy_config(self, prefill_points: tuple[tuple[int, float], ...] | None = None,
                      decode_points: tuple[tuple[int, int, float], ...] | None = None) -> PolicyConfig:  # fmt: skip
        """The router's configuration, as the live coordinator builds it; the
        sim-only baselines (vllm, sarathi) route least-loaded."""
        router = _NODG[self.policy][1] if self.policy in _NODG else self.policy
        return PolicyConfig(
            router, self.slo, slack_mode=self.slack_mode, output_reservation=self.output_reservation,  # type: ignore[arg-type]
            decode_margin_s=self.decode_margin_s, mitosis=self.mitosis, autoscale=self.autoscale,
            prefill_points=prefill_points, decode_points=decode_points,
            trickle_budget=self.chunk_size or DEFAULT_TRICKLE_BUDGET, lost_yield=self.lost_yield,
            lost_yield_max_wait=self.lost_yield_max_wait,
        )  # fmt: skip

    @property
    def tp_(self) -> int:
        return self.tp or default_tp(self.hardware, self.model)

    @property
    def slo(self) -> SLO:
        return SLO(self.slo_ttft, self.slo_tpot)

    def engine_model(self, tp: int | None = None) -> EngineModel:
        if self.model in MODELS:
            return RooflineModel(self.model, self.hardware, tp or self.tp_, self.cost_model)
        if tp not in (None, self.tp_):
            raise ValueError("a measured profile fixes the instance size: DistServe's split needs a preset model")
        return ProfileModel.load(self.model)

    def token_budget(self) -> int | None:
        """Tokens per step of a chunked-prefill baseline's engines (None: not chunked)."""
        mode = _NODG.get(self.policy, (None,))[0]
        if self.policy == "ecoserve-trickle":  # its CHUNKED phase's budget
            return self.chunk_size or DEFAULT_TRICKLE_BUDGET
        if mode == "sarathi":
            return self.chunk_size or sarathi_budget(self)
        if mode == "stock":
            return self.chunk_size or stock_budget(self)
        return None

    def prefix_index(self, capacity_tokens: int, owner: str, directory: PrefixDirectory) -> PrefixIndex | None:
        """EcoServe's estimate of one engine's prefix cache (None: no prefix routing)."""
        if not (self.prefix_cache and self.prefix_routing and self.policy in ("ecoserve", "ecoserve-trickle")):
            return None
        return PrefixIndex(max(1, capacity_tokens // BLOCK_TOKENS), BLOCK_TOKENS, directory=directory, owner=owner)

    def describe(self) -> dict:
        out = {"policy": self.policy, "model": self.model, "hardware": self.hardware, "tp": self.tp_,
               "cost_model": self.cost_model if self.model in MODELS else "profile",
               "instances": self.instances, "slo": {"ttft": self.slo_ttft, "tpot": self.slo_tpot}}
        if (budget := self.token_budget()) is not None:
            out["chunk_size"] = budget
        if self.policy == "mooncake" and self.pd_ratio:
            out["pd_ratio"] = f"{self.pd_ratio[0]}:{self.pd_ratio[1]}"
        if self.policy == "distserve" and self.distserve_layout:
            n_p, tp_p, n_d, tp_d = self.distserve_layout
            out["distserve_layout"] = f"{n_p}xP(tp{tp_p})+{n_d}xD(tp{tp_d}) per node"
        if self.prefix_cache:
            out["prefix_cache"] = True
            if self.policy in ("ecoserve", "ecoserve-trickle"):
                out["prefix_routing"] = self.prefix_routing
        if self.lost_yield and self.policy in ("ecoserve", "ecoserve-trickle"):
            out["lost_yield"] = True
            if self.lost_yield_max_wait is not None:
                out["lost_yield_max_wait"] = self.lost_yield_max_wait
        if self.autoscale:
            out["autoscale"] = {
                "min_instances": self.min_instances, "max_instances": self.max_instances,
                "macro_min": self.macro_min, "macro_max": self.macro_size, "launch_delay_s": self.launch_delay_s,
                "scale_interval_s": self.scale_interval_s, "ttft_window_s": self.ttft_window_s,
                "cooldown_s": self.scale_cooldown_s, "scale_in_hold_s": self.scale_in_hold_s,
            }
        return out


def stock_budget(cfg: SimConfig) -> int:
    """vLLM V1's default ``max_num_batched_tokens`` for its API server
    (``EngineArgs._set_default_args``, 0.32): 8192 on GPUs of 70 GB or more
    except A100s, 16384 from 160 GB, 2048 elsewhere, CPUs included (a measured
    profile: the real CPU engines report 2048)."""
    if cfg.model not in MODELS:
        return 2048
    hw = HARDWARE[cfg.hardware]
    if hw.mem_gb >= 160:
        return 16384
    if hw.mem_gb >= 70 and "a100" not in hw.gpu.lower():  # vLLM tests the device name
        return 8192
    return 2048


def sarathi_budget(cfg: SimConfig) -> int:
    """Sarathi-Serve's rule for its token budget: the largest budget whose
    hybrid step (the budget's tokens of prefill alongside a decode batch of 32
    at 1,024 tokens of context) stays within the TPOT SLO; at least 128."""
    model = cfg.engine_model()
    best = 128
    for b in (*SARATHI_BUDGETS, 4096, 8192):
        if model.step_time([(b - 32, 0)], 32, 32 * 1024) <= cfg.slo_tpot:
            best = max(best, b)
    return best


def distserve_layouts(cfg: SimConfig) -> list[tuple[int, int, int, int]]:
    """Every way to split a node's ``tp`` GPUs into prefill and decode instances
    (powers-of-two TP, at least one of each, weights and one full-context
    request fitting)."""
    gpus = cfg.tp_
    sizes = [t for t in (1, 2, 4, 8, 16) if t < gpus and cfg.engine_model(t).kv_capacity_tokens >= _min_kv(cfg, t)]
    out = []
    for tp_p in sizes:
        for tp_d in sizes:
            for n_p in range(1, gpus // tp_p + 1):
                rest = gpus - n_p * tp_p
                if rest > 0 and rest % tp_d == 0:
                    out.append((n_p, tp_p, rest // tp_d, tp_d))
    return out


def _min_kv(cfg: SimConfig, tp: int) -> int:
    m = cfg.engine_model(tp)
    return min(m.max_context or 4096, 4096)


def candidates(cfg: SimConfig) -> list[SimConfig]:
    """The configurations a baseline is tried in (its best one is reported)."""
    if cfg.policy == "mooncake" and cfg.pd_ratio is None:
        n = cfg.instances
        if n < 2:
            raise ValueError("Mooncake needs at least 2 instances (one prefill, one decode)")
        return [replace(cfg, pd_ratio=(p, n - p)) for p in range(1, n)]
    if cfg.policy == "distserve" and cfg.distserve_layout is None:
        layouts = distserve_layouts(cfg)
        if not layouts:
            raise ValueError(
                f"DistServe cannot split {cfg.tp_} GPUs per node into prefill and decode instances "
                f"that hold {cfg.model}"
            )
        return [replace(cfg, distserve_layout=l) for l in layouts]
    if cfg.policy in ("sarathi", "sarathi-dyn", "ecoserve-trickle") and cfg.chunk_size is None:
        return [replace(cfg, chunk_size=b) for b in sorted({sarathi_budget(cfg), *SARATHI_BUDGETS})]
    return [cfg]


@dataclass
class Cluster:
    config: SimConfig
    sim: Simulator
    driver: object
    engines: list[SimEngine]  # every engine the run had (autoscaling appends the launched ones)
    info: dict = field(default_factory=dict)
    autoscaler: SimAutoscaler | None = None


def build(cfg: SimConfig) -> Cluster:
    """A fresh simulator wired for ``cfg`` (one configuration: no search)."""
    sim = Simulator(fast_forward=cfg.fast_forward, max_ff_steps=cfg.max_ff_steps, drain_limit_s=cfg.drain_limit_s)
    if cfg.policy in ("distserve", "mooncake"):
        return _build_fudg(cfg, sim)
    model = cfg.engine_model()
    decode_points = tuple(model.decode_points()) if cfg.policy in ("ecoserve-trickle", "sarathi-dyn") else None
    pcfg = cfg.policy_config(PolicyConfig.points_of(model.prefill_points()), decode_points)
    predictor = pcfg.predictor()
    router = pcfg.build_router(predictor)
    directory = PrefixDirectory()  # which instance holds which block, for the router's lookups
    if cfg.policy in ("ecoserve", "ecoserve-trickle"):
        # ecoserve-trickle's engines chunk at its trickle budget in CHUNKED (policy/trickle.py)
        budget = pcfg.trickle_budget if cfg.policy == "ecoserve-trickle" else None

        def new_engine(eid: str) -> SimEngine:
            return SimEngine(sim, eid, model, "phased", token_budget=budget, max_num_seqs=cfg.max_num_seqs,
                             node=int(eid[1:]), prefix_cache=cfg.prefix_cache)  # fmt: skip

        engines = [new_engine(f"i{k}") for k in range(cfg.instances)]
        for k, e in enumerate(engines):
            inst = InstanceState(e.id, e.capacity, max_requests=e.max_num_seqs,
                                 prefix=cfg.prefix_index(e.capacity, e.id, directory))  # fmt: skip
            router.add_instance(inst, 0.0, macro=pcfg.starting_macro(k, cfg.instances))
        info = {"macro_instances": pcfg.starting_layout(cfg.instances)}
    else:
        mode, rname = _NODG[cfg.policy]
        budget = cfg.token_budget()
        if mode == "stock":
            mode = "sarathi"
        engines = [
            SimEngine(sim, f"i{k}", model, mode, token_budget=budget, max_num_seqs=cfg.max_num_seqs, node=k,
                      prefix_cache=cfg.prefix_cache, **_dynamic_budget(cfg, model, budget, pcfg))  # fmt: skip
            for k in range(cfg.instances)
        ]
        for e in engines:
            # The oracle sees each engine's real cache (read only: LongestPrefixRouter never inserts).
            seen = e.prefix_cache if cfg.policy == "prefix-oracle" else None
            router.add_instance(InstanceState(e.id, e.capacity, prefix=seen), 0.0)
        info = {"router": rname, "engine": mode}
        if budget:
            info["chunk_size"] = budget
    driver = RouterDriver(sim, router, engines, tick_s=cfg.tick_s, predictor=predictor)
    sim.driver = driver
    sim.engines = engines
    info["kv_capacity_tokens"] = engines[0].capacity
    cluster = Cluster(cfg, sim, driver, engines, info)
    if cfg.autoscale:

        def launched(eid: str) -> SimEngine:
            e = new_engine(eid)
            cluster.engines.append(e)
            return e

        planner = pcfg.planner()
        assert planner is not None
        cluster.autoscaler = SimAutoscaler(sim, driver, planner, launched, launch_delay_s=cfg.launch_delay_s,
                                           interval_s=cfg.scale_interval_s,
                                           prefix_of=lambda e: cfg.prefix_index(e.capacity, e.id, directory))
        cluster.autoscaler.start(0.0)
    return cluster


def _dynamic_budget(cfg: SimConfig, model: EngineModel, budget: int | None, pcfg: PolicyConfig) -> dict:
    """sarathi-dyn's engine arguments: the budget rule (its static budget as the
    floor, the model's per-step limit as the ceiling) and the engine's own
    step-time predictor, from the profile a live engine would have measured."""
    if cfg.policy != "sarathi-dyn":
        return {}
    static = budget or sarathi_budget(cfg)
    rule = ChunkBudgetRule(cfg.slo_tpot, static, max(static, model.max_batched_tokens))
    return {"budget_rule": rule, "step_predictor": pcfg.step_predictor()}  # each engine its own


def _build_fudg(cfg: SimConfig, sim: Simulator) -> Cluster:
    prefill: list[SimEngine] = []
    decode: list[SimEngine] = []
    links: dict[int, list[Link]] = {}
    if cfg.policy == "mooncake":
        if cfg.instances < 2:
            raise ValueError("Mooncake needs at least 2 instances (one prefill, one decode)")
        n_p, n_d = cfg.pd_ratio or (cfg.instances // 2, cfg.instances - cfg.instances // 2)
        if n_p < 1 or n_d < 1 or n_p + n_d != cfg.instances:
            raise ValueError(f"P:D ratio {n_p}:{n_d} must use all {cfg.instances} instances, at least one of each")
        model = cfg.engine_model()
        if model.kv_bytes_per_token is None:
            raise ValueError("Mooncake needs kv_bytes_per_token (add it to the profile)")
        hw = HARDWARE.get(cfg.hardware, HARDWARE["l20"])
        for k in range(cfg.instances):
            pool = prefill if k < n_p else decode
            mode = "prefill" if k < n_p else "decode"
            pool.append(SimEngine(sim, f"{mode[0]}{k}", model, mode, max_num_seqs=cfg.max_num_seqs, node=k,
                                  prefix_cache=cfg.prefix_cache and mode == "prefill"))  # fmt: skip
            links[k] = [Link(f"nic{k}", hw.net_bytes_per_s, hw.net_latency_s)]
        scope = "cluster"
        kvb = model.kv_bytes_per_token
        info = {"prefill_instances": n_p, "decode_instances": n_d, "pd_ratio": f"{n_p}:{n_d}",
                "network_GBps": hw.net_bytes_per_s / 1e9}
    else:
        layout = cfg.distserve_layout or distserve_layouts(cfg)[0]
        n_p, tp_p, n_d, tp_d = layout
        if n_p * tp_p + n_d * tp_d != cfg.tp_:
            raise ValueError(f"DistServe layout {layout} does not use the node's {cfg.tp_} GPUs")
        mp, md = cfg.engine_model(tp_p), cfg.engine_model(tp_d)
        hw = HARDWARE[cfg.hardware]
        bw = hw.intra_gbps * 1e9 * hw.link_eff * min(tp_p, tp_d)
        for node in range(cfg.instances):
            for j in range(n_p):
                prefill.append(SimEngine(sim, f"n{node}p{j}", mp, "prefill", max_num_seqs=cfg.max_num_seqs, node=node,
                                         prefix_cache=cfg.prefix_cache))  # fmt: skip
            for j in range(n_d):
                decode.append(SimEngine(sim, f"n{node}d{j}", md, "decode", max_num_seqs=cfg.max_num_seqs, node=node))
            links[node] = [Link(f"node{node}", bw, 20e-6)]
        scope = "node"
        kvb = mp.kv_bytes_per_token
        info = {"distserve_layout": f"{n_p}xP(tp{tp_p})+{n_d}xD(tp{tp_d}) per node",
                "intra_link_GBps": bw / 1e9}
    driver = FuDGDriver(sim, prefill, decode, kv_bytes_per_token=kvb, scope=scope, node_links=links)
    sim.driver = driver
    sim.engines = prefill + decode
    info["kv_capacity_tokens"] = {"prefill": prefill[0].capacity, "decode": decode[0].capacity}
    return Cluster(cfg, sim, driver, prefill + decode, info)
