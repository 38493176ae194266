"""Trace one TPOT-missing EcoServe request (ANALYSIS.md, point 4): the routing
decisions, phase switches and steps of its instance around its lifetime.
A ``SimObserver`` (ecoserve/sim/observer.py) records them; the policy and
simulator are unchanged. Full-run workload (500 requests / 120 s, seed 0).

Rows: ``(t, instance, "route", request, stall, (least saved TPOT, its request),
window size, window predicted prefill, window start)`` for each routing
decision (a constraint check that passed; the instance's state before the
request joins), ``(t, instance, "phase", PREFILL|DECODE)``, ``(start, instance,
"P", [requests], 0, end, 1)`` for a prefill step and ``(start, instance, "D",
batch, end, steps)`` for a stretch of decode steps.

    .venv/bin/python bench/analysis/trace_window.py codellama-34b longbench 2.48 min [k-th miss]

With ``ECOSERVE_TIMELINE=run.html`` (or ``.png``) it also draws the run's engine
timelines, the dashboard's picture, from a second observer on the same run
(``ecoserve/sim/timeline.py``).
"""
import os
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ecoserve.sim import SimConfig, build, MODELS
from ecoserve.sim.observer import SimObserver
from ecoserve.sim.timeline import TimelineObserver
from ecoserve.timeline.html import write
from ecoserve.workload import WorkloadTemplate


class Trace(SimObserver):
    def __init__(self, tpot):
        self.tpot, self.log = tpot, []

    def on_step(self, s):  # reported at its end: the log is sorted by time below
        self.log.append((s.start, s.engine, "P" if s.prefill else "D", [rid for rid, _ in s.prefill], len(s.decode),
                         s.end, s.steps))

    def on_phase(self, engine_id, old, new, now):
        self.log.append((now, engine_id, "phase", new.name))

    def on_check(self, inst, req, res, now):
        if res.failed is None:
            dec = list(inst.decoding())
            mn = min((r.saved_tpot(now, self.tpot), r.id) for r in dec) if dec else None
            self.log.append((now, inst.id, "route", req.id, round(res.stall, 3), mn and (round(mn[0], 3), mn[1]),
                             inst.window_size, round(inst.window_pred, 3), inst.window_start))


model, ds, rate, slack = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
ttft = {"alpaca":1.0,"sharegpt":5.0,"longbench":15.0}[ds]
cfg = SimConfig(policy="ecoserve", model=model, hardware="l20", slo_ttft=ttft, slo_tpot=0.1, slack_mode=slack)
tpl = WorkloadTemplate(ds, num_requests=500, seed=0, max_context=MODELS[model].max_context)
reqs = tpl.at_rate(rate, tpl.count_for(rate, 120))
cl = build(cfg)
trace = Trace(cfg.slo_tpot)
cl.sim.observers.append(trace)
picture = TimelineObserver()
picture.attach(cl)
states = cl.sim.run(reqs)
if os.environ.get("ECOSERVE_TIMELINE"):
    print("timeline:", write(picture.document(title=f"ecoserve ({slack}), {model}, {ds}, {rate} req/s"),
                             os.environ["ECOSERVE_TIMELINE"]))
log = sorted(trace.log, key=lambda e: e[0])  # stable: same-time rows keep their order
miss = [s for s in states if s.finish and s.first_token - s.arrival <= ttft and s.output > 1 and (s.finish - s.first_token)/(s.output-1) > 0.1]
print(len(miss), "tpot misses of", len(states))
s = miss[int(sys.argv[5]) if len(sys.argv) > 5 else 0]
print("req", s.id, "arr", round(s.arrival,3), "prompt", s.prompt, "out", s.output, "first", round(s.first_token,3), "fin", round(s.finish,3), "tpot", round((s.finish-s.first_token)/(s.output-1),4), "engine", s.engine.id)
for e in log:
    if e[1] == s.engine.id and s.arrival - 1 <= e[0] <= s.finish + 0.01:
        print(e if e[2] != "D" else (round(e[0],3), e[1], "D", e[4], round(e[5],3), e[6]))
