"""EcoServe from Python: two local vLLM engines behind one coordinator.

    python examples/python_api.py

Generates the tiny random-weight model if missing (.cache/models/tiny), starts
two engines with the EcoServe plugin (one per core on a CPU machine), sends a
completion and a streamed chat, prints where they ran, and stops everything.
The weights are random, so the text is gibberish; the point is the plumbing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from ecoserve import Coordinator
from ecoserve.models import make_model, model_matches

MODEL = Path(__file__).resolve().parent.parent / ".cache" / "models" / "tiny"


async def main() -> None:
    if not model_matches(MODEL, "tiny"):
        make_model(MODEL, size="tiny", force=True)
    engine_args = ["--max-model-len", "512", "--enforce-eager"]  # small and quick to start on CPU
    async with Coordinator(MODEL, engines=2, engine_args=engine_args, slo_ttft=0.1, slo_tpot=0.1) as coord:
        reply = await coord.generate("Once upon a time", max_tokens=16, ignore_eos=True)
        print("completion:", repr(reply["choices"][0]["text"]), reply["usage"])

        print("chat (streamed): ", end="", flush=True)
        messages = [{"role": "user", "content": "Say something."}]
        async for chunk in coord.chat_stream(messages, max_tokens=12, ignore_eos=True):
            for choice in chunk["choices"]:
                print(choice["delta"].get("content") or "", end="", flush=True)
        print()

        # A burst: with a tight TTFT SLO one prefill window holds a few requests; routing then
        # rolls to the other engine while the first decodes (rolling activation).
        burst = await asyncio.gather(
            *(coord.generate(f"request {i}", max_tokens=8, ignore_eos=True) for i in range(16))
        )
        print("burst:", sum(r["usage"]["completion_tokens"] for r in burst), "tokens in", len(burst), "replies")

        st = coord.status()
        print(json.dumps({i["id"]: {"routed": i["routed_total"], "phase": i["phase"]} for i in st["instances"]}))
    print("engines stopped")


if __name__ == "__main__":  # vLLM on CPU starts processes with spawn: keep this guard
    asyncio.run(main())
