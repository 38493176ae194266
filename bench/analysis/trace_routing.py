"""Where EcoServe routes at low load (ANALYSIS.md, point 1): when each instance
gets its first request, and requests per instance in 20-s bins. Full-run
workload (500 requests / 120 s, seed 0); the policy and simulator are unchanged.

    .venv/bin/python bench/analysis/trace_routing.py llama-30b alpaca mean 18.3
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ecoserve.sim import SimConfig, MODELS
from ecoserve.sim.cluster import build
from ecoserve.workload import WorkloadTemplate
model, ds, slack, rate = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
ttft = {"alpaca":1.0,"sharegpt":5.0,"longbench":15.0}[ds]
cfg = SimConfig(policy="ecoserve", model=model, hardware="l20", slo_ttft=ttft, slo_tpot=0.1, slack_mode=slack)
tpl = WorkloadTemplate(ds, num_requests=500, seed=0, max_context=MODELS[model].max_context)
reqs = tpl.at_rate(rate, tpl.count_for(rate, 120))
cl = build(cfg)
st = cl.sim.run(reqs)
first = {}
for s in sorted(st, key=lambda s: s.arrival):
    if s.engine and s.engine.id not in first: first[s.engine.id] = round(s.arrival, 1)
print(slack, rate, "first request per engine at", sorted(first.values()))
# requests per engine in 10 s bins
import collections
bins = collections.defaultdict(collections.Counter)
for s in st:
    if s.engine: bins[int(s.arrival // 20)][s.engine.id] += 1
for b in sorted(bins): print(b*20, [bins[b][f"i{k}"] for k in range(8)])
