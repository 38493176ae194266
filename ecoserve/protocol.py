"""Typed messages between the coordinator and the engines' vLLM plugin.

Defined once here and imported by both sides (``ecoserve.engine`` and
``vllm_plugin``). Everything travels as msgspec JSON, decoded strictly into these
Structs: unknown message types and wrong field types are rejected, and nothing
is ever unpickled. JSON rather than msgpack so the very same bytes serve the
ZeroMQ channel and the HTTP routes (``GET /ecoserve/status``).

Wire summary
- Commands (coordinator -> engine): ``PhaseCommand`` or ``GetStatus``, tagged by a
  ``"type"`` field, e.g. ``{"type": "set_phase", "phase": "decode"}`` (optionally
  with ``"lease_s": 30``).
- Replies (engine -> coordinator): an ``EngineStatus`` (the fresh status, taken
  after the command was applied) or an ``ErrorReply``.
- Pushes (engine -> subscribers, ZeroMQ PUB): one ``EngineStatus`` after every
  engine step while busy, and after every phase change.

The wire's types are named apart from the policy's: ``EnginePhase`` and
``PhaseCommand`` here, ``policy.Phase`` and the ``policy.SetPhase`` action
there. The policy's decision is not the wire message (an engine has phases,
``temporal``, that no policy decision names).

Base dependencies only (msgspec): the policy core and the simulator import this.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import msgspec

# temporal: the engine alternates by itself, prefill first (EcoServe's default).
# prefill:  admit and prefill; running decodes pause and keep their KV cache.
# decode:   admit nothing; running requests decode.
# mixed:    stock vLLM scheduling (baselines).
# chunked:  every decode, plus at most a budget of prompt tokens per step: the
#           command's ``prompt_budget``, its ``step_budget`` less the step's decodes,
#           or the engine's own slack-derived rule for a TPOT SLO (``tpot_s``, or
#           ECOSERVE_TPOT_SLO; vllm_plugin/budget.py).
EnginePhase = Literal["temporal", "prefill", "decode", "mixed", "chunked"]
PHASES: tuple[str, ...] = ("temporal", "prefill", "decode", "mixed", "chunked")

# What the engine's batches currently contain (in every phase).
Activity = Literal["idle", "prefill", "decode", "mixed"]

StepKind = Literal["prefill", "decode", "mixed", "empty"]


class PhaseCommand(msgspec.Struct, tag="set_phase", tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    """Switch the engine's phase; takes effect before its next step.

    ``lease_s``: unless another phase command arrives within that many
    seconds, the engine falls back to its startup phase (so an engine whose
    coordinator died is not left frozen in ``decode``). None: no lease.
    Omitted from the wire when None, so such commands read as before."""

    phase: EnginePhase
    lease_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] | None = None
    # ``chunked`` only: prompt tokens per step (fixed), or the TPOT SLO of the
    # engine's own rule, or tokens per step with the decodes included (Sarathi's
    # budget, vLLM's ``--max-num-batched-tokens`` sense: the step's prompt tokens
    # are this less its decodes, none when the decodes take it all). A fixed
    # budget wins over the rule, ``prompt_budget`` over ``step_budget``; an
    # SLO is kept for the rule. All None: the engine's settings stand.
    prompt_budget: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tpot_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] | None = None
    step_budget: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # with the rule: the TTFT SLO its waiting prompts keep (the budget is at least
    # the chunk with which each that still can meets it); kept like ``tpot_s``
    ttft_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] | None = None


class GetStatus(msgspec.Struct, tag="get_status", tag_field="type", forbid_unknown_fields=True):
    """Ask for a fresh status (wakes an idle engine, changes nothing)."""


Command = Union[PhaseCommand, GetStatus]


class StepRecord(msgspec.Struct, frozen=True):
    """One engine step, for online calibration of the prefill-time predictor.

    ``duration_s`` runs from the start of scheduling to the end of output
    processing, so it includes the model forward pass and sampling.
    """

    step: int  # engine step index (monotonic per engine)
    start: float  # wall-clock time (time.time()) the step was scheduled
    duration_s: float
    kind: StepKind
    prefill_tokens: int  # prompt (or recomputed) tokens computed this step
    prefill_reqs: int
    decode_batch: int  # requests that each decoded one token this step
    decode_context_tokens: int  # sum of the decoding requests' context lengths


class EngineAddresses(msgspec.Struct, frozen=True):
    """ZeroMQ endpoints of one engine. ``status``: PUB socket pushing
    ``EngineStatus`` (subscribe to b""); ``command``: ROUTER socket taking
    ``Command`` messages (use a REQ or DEALER socket), answering with a reply."""

    status: str
    command: str


class PrefixCaching(msgspec.Struct, frozen=True, omit_defaults=True):
    """The engine's automatic prefix caching, as a coordinator needs it to tell
    which prompts it holds (``ecoserve.engine.kv_hash``): its block-hash
    algorithm and seed (``$PYTHONHASHSEED``, "" when unset), and the ZeroMQ
    endpoint of its KV-cache events (``--kv-events-config``; "" when it
    publishes none). Block size: ``EngineStatus.block_size``."""

    hash_algo: str
    hash_seed: str = ""
    kv_events: str = ""


class EngineStatus(msgspec.Struct, tag="status", tag_field="type"):
    """A snapshot of one engine, exact at ``time`` (taken on the engine thread)."""

    engine_id: str
    seq: int  # increases with every status this engine emits
    time: float  # wall-clock time of the snapshot
    phase: EnginePhase
    phase_since: float  # wall-clock time the current phase was set
    activity: Activity  # what the last batches held
    activity_since: float  # when that activity began
    step: int  # steps taken so far
    num_waiting: int  # queued, not admitted (includes preempted requests)
    num_prefilling: int  # admitted, prompt not fully computed (chunked prefill)
    num_decoding: int  # producing tokens (paused during prefill phases)
    kv_blocks_free: int
    kv_blocks_total: int
    block_size: int  # tokens per KV block
    max_num_seqs: int
    max_num_batched_tokens: int
    # Pushes carry the steps since the previous push; replies carry the most
    # recent ones. Deduplicate by ``StepRecord.step``.
    steps: list[StepRecord] = []
    addresses: EngineAddresses | None = None
    vllm_version: str = ""
    prompt_budget: int | None = None  # ``chunked``: the budget of its latest step
    prefix_caching: PrefixCaching | None = None  # None: prefix caching off (or an older plugin)


class ErrorReply(msgspec.Struct, tag="error", tag_field="type"):
    """The command was rejected; the engine state is unchanged."""

    error: str


Reply = Union[EngineStatus, ErrorReply]

_encoder = msgspec.json.Encoder()
_command_decoder = msgspec.json.Decoder(Command)
_reply_decoder = msgspec.json.Decoder(Reply)
_status_decoder = msgspec.json.Decoder(EngineStatus)


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode_command(data: bytes | str) -> Command:
    """Raises msgspec.DecodeError / ValidationError on anything malformed."""
    return _command_decoder.decode(data)


def decode_reply(data: bytes | str) -> Reply:
    return _reply_decoder.decode(data)


def decode_status(data: bytes | str) -> EngineStatus:
    return _status_decoder.decode(data)
