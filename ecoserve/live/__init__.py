"""The live body: the coordinator and the pieces it composes.

- ``coordinator``: composes the rest and carries out the router's actions (the Python API);
- ``observer``: the hooks the coordinator calls for those who watch it (metrics, the timeline);
- ``timeline``: the dashboard's record of what every engine did;
- ``admission``: what a validated request means to the policy and the engine;
- ``generation``: one request's stream from its engine to the client;
- ``fleet``: the engines (attach, phases, health, failure, replacement, drains);
- ``autoscaler``: the mitosis planner, carried out on real engines;
- ``status``: the ``/ecoserve/status`` document;
- ``tokenizer``: prompt token counts for the policy.
"""

from ecoserve.live.coordinator import Coordinator
from ecoserve.live.observer import Observer, Observers
from ecoserve.live.generation import Generation
from ecoserve.openai.errors import RequestError
from ecoserve.openai.validation import CHAT, COMPLETIONS

__all__ = ["CHAT", "COMPLETIONS", "Coordinator", "Generation", "Observer", "Observers", "RequestError"]
