"""Engine timelines: what every engine did over time (phases, steps, routed
requests, queue, latencies against the SLOs, KV use, scaling events).

``document`` is the shape; ``recorder`` keeps it live for the dashboard;
``html`` and ``png`` render it (the live page, a simulated run, a benchmarked
run all draw with ``static/dashboard.js``).
"""

from ecoserve.timeline.document import VERSION, Timeline, decode, encode
from ecoserve.timeline.recorder import TimelineRecorder

__all__ = ["VERSION", "Timeline", "TimelineRecorder", "decode", "encode"]
