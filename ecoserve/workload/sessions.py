"""Synthetic multi-turn chat: sessions whose prompts grow with their history and
share a few system prompts, with the block hashes a prefix cache sees.

Rule: a session starts with one of ``system_prompts`` system prompts; turn t's
prompt is the system prompt, every earlier user message and answer, then the
new user message, so it repeats the whole of turn t-1's prompt and answer.
Sessions start as a Poisson process; a session's next turn comes a think time
(exponential) after its previous answer would have been read. Block hashes
are chained over ``BLOCK_TOKENS``-token windows of the prompt, as vLLM's and
Mooncake's are: a block's hash is that of the previous block's hash and what
the window holds (which segment, which tokens of it), so equal prefixes give
equal hashes and nothing else does. Deterministic in ``seed``.

    trace = chat_trace(ChatSessions(sessions=100, seed=1))   # a Trace: replay it at any rate
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ecoserve.workload.traces import BLOCK_TOKENS, Trace

ANSWER_S_PER_TOKEN = 0.02  # an answer streams at ~TPOT pace before the user reads it and thinks


@dataclass(frozen=True)
class ChatSessions:
    sessions: int = 300
    min_turns: int = 2
    max_turns: int = 8
    system_prompts: int = 4  # shared by every session that draws it
    system_tokens: int = 1536
    user_tokens: tuple[int, int] = (30, 400)  # uniform, per message (ShareGPT-like turns)
    answer_tokens: tuple[int, int] = (50, 500)
    session_rate: float = 1.0  # sessions started per second (the trace is time-scaled to any rate later)
    think_s: float = 20.0  # mean seconds between an answer and the next user message
    max_prompt_tokens: int = 16_384  # a session ends before its prompt would pass this
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sessions < 1 or not 1 <= self.min_turns <= self.max_turns or self.system_prompts < 1:
            raise ValueError("need sessions >= 1, 1 <= min_turns <= max_turns, system_prompts >= 1")
        for lo, hi in (self.user_tokens, self.answer_tokens):
            if not 1 <= lo <= hi:
                raise ValueError("token ranges must be 1 <= low <= high")
        if self.session_rate <= 0 or self.think_s < 0 or self.max_prompt_tokens <= self.system_tokens:
            raise ValueError("need session_rate > 0, think_s >= 0, max_prompt_tokens > system_tokens")


def block_hashes(segments: list[tuple[int, int]], total: int) -> tuple[int, ...]:
    """Chained hashes of the full ``BLOCK_TOKENS`` windows of a prompt made of
    ``segments`` ((segment id, length), in order), ``total`` tokens long."""
    out: list[int] = []
    window: list[tuple[int, int, int]] = []  # (segment, first token, last token + 1) in the current block
    filled, prev = 0, 0
    for seg, length in segments:
        at = 0
        while at < length:
            take = min(length - at, BLOCK_TOKENS - filled)
            window.append((seg, at, at + take))
            at += take
            filled += take
            if filled == BLOCK_TOKENS:
                prev = hash((prev, tuple(window)))  # ints and tuples of ints: the same in every process
                out.append(prev)
                window, filled = [], 0
    assert len(out) == total // BLOCK_TOKENS
    return tuple(out)


def chat_trace(cfg: ChatSessions = ChatSessions()) -> Trace:
    """The sessions' turns as a trace (times, prompt and output lengths, block hashes)."""
    rng = random.Random(f"chat:{cfg.seed}")
    next_id = iter(range(cfg.system_prompts, 1 << 62))  # segment ids; 0..system_prompts-1 are the system prompts
    rows: list[tuple[float, int, int, tuple[int, ...]]] = []
    start = 0.0
    for _ in range(cfg.sessions):
        start += rng.expovariate(cfg.session_rate)
        segments = [(rng.randrange(cfg.system_prompts), cfg.system_tokens)]
        t = start
        for _turn in range(rng.randint(cfg.min_turns, cfg.max_turns)):
            user = (next(next_id), rng.randint(*cfg.user_tokens))
            prompt = sum(n for _, n in segments) + user[1]
            answer = rng.randint(*cfg.answer_tokens)
            if prompt + answer > cfg.max_prompt_tokens:
                break
            segments.append(user)
            rows.append((t, prompt, answer, block_hashes(segments, prompt)))
            segments.append((next(next_id), answer))  # the answer joins the history
            t += ANSWER_S_PER_TOKEN * answer + (rng.expovariate(1.0 / cfg.think_s) if cfg.think_s else 0.0)
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return Trace("chat", [r[0] - t0 for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                 source=f"synthetic multi-turn chat, seed {cfg.seed}", blocks=[r[3] for r in rows])  # fmt: skip
