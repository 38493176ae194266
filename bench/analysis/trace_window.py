"""Trace one TPOT-missing EcoServe request (ANALYSIS.md, point 4): the routing
decisions, phase switches and steps of its instance around its lifetime.
In-process observers only; the policy and simulator are unchanged. Full-run
workload (500 requests / 120 s, seed 0).

    .venv/bin/python bench/analysis/trace_window.py codellama-34b longbench 2.48 min [k-th miss]
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ecoserve.sim import SimConfig, build, MODELS
from ecoserve.sim.engine import SimEngine
from ecoserve.policy.constraints import ConstraintChecker
from ecoserve.workload import WorkloadTemplate
model, ds, rate, slack = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
ttft = {"alpaca":1.0,"sharegpt":5.0,"longbench":15.0}[ds]
cfg = SimConfig(policy="ecoserve", model=model, hardware="l20", slo_ttft=ttft, slo_tpot=0.1, slack_mode=slack)
tpl = WorkloadTemplate(ds, num_requests=500, seed=0, max_context=MODELS[model].max_context)
reqs = tpl.at_rate(rate, tpl.count_for(rate, 120))
cl = build(cfg)
log = []
ob = SimEngine._begin
def _b(self, now):
    ob(self, now)
    if self.busy: log.append((now, self.id, "P" if self._chunks else "D", [r.id for r, _ in self._chunks], len(self._decode), self._ends[-1], len(self._ends)))
SimEngine._begin = _b
osp = SimEngine.set_phase
def _sp(self, ph, now, kick=True):
    if ph is not self.phase: log.append((now, self.id, "phase", ph.name))
    osp(self, ph, now, kick)
SimEngine.set_phase = _sp
oc = ConstraintChecker.check
router = cl.driver.router
def _c(self, inst, req, now):
    res = oc(self, inst, req, now)
    if res.failed is None:
        dec = list(inst.decoding())
        mn = min((r.saved_tpot(now, 0.1), r.id) for r in dec) if dec else None
        log.append((now, inst.id, "route", req.id, round(res.stall,3), mn and (round(mn[0],3), mn[1]), inst.window_size, round(inst.window_pred,3), inst.window_start))
    return res
ConstraintChecker.check = _c
states = cl.sim.run(reqs)
miss = [s for s in states if s.finish and s.first_token - s.arrival <= ttft and s.output > 1 and (s.finish - s.first_token)/(s.output-1) > 0.1]
print(len(miss), "tpot misses of", len(states))
s = miss[int(sys.argv[5]) if len(sys.argv) > 5 else 0]
print("req", s.id, "arr", round(s.arrival,3), "prompt", s.prompt, "out", s.output, "first", round(s.first_token,3), "fin", round(s.finish,3), "tpot", round((s.finish-s.first_token)/(s.output-1),4), "engine", s.engine.id)
for e in log:
    if e[1] == s.engine.id and s.arrival - 1 <= e[0] <= s.finish + 0.01:
        print(e if e[2] != "D" else (round(e[0],3), e[1], "D", e[4], round(e[5],3), e[6]))
