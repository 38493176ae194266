"""Synthetic multi-turn chat (ecoserve/workload/sessions.py): growing histories
share their prefixes block for block, system prompts are shared across
sessions, and nothing else collides."""

from __future__ import annotations

import pytest

from ecoserve.workload import WorkloadTemplate
from ecoserve.workload.sessions import ChatSessions, block_hashes, chat_trace
from ecoserve.workload.traces import BLOCK_TOKENS


def test_a_later_turn_repeats_the_earlier_prompt_and_answer_block_for_block():
    one = ChatSessions(sessions=1, min_turns=4, max_turns=4, think_s=0.0, seed=3)
    tr = chat_trace(one)
    assert len(tr) == 4 and tr.times == sorted(tr.times)
    for k in range(1, 4):
        prev, cur = tr.blocks[k - 1], tr.blocks[k]
        # Turn k's prompt holds turn k-1's prompt and answer: every full block of
        # the earlier prompt comes back, and the prompt grew by at least that answer.
        assert cur[: len(prev)] == prev
        assert tr.prompts[k] >= tr.prompts[k - 1] + tr.outputs[k - 1]
        assert len(cur) == tr.prompts[k] // BLOCK_TOKENS


def test_system_prompts_are_shared_and_sessions_otherwise_differ():
    tr = chat_trace(ChatSessions(sessions=40, system_prompts=2, system_tokens=2 * BLOCK_TOKENS, seed=1))
    firsts = {b[:2] for b in tr.blocks}
    assert len(firsts) == 2  # two system prompts, two leading pairs of blocks across 40 sessions
    thirds = [b[2] for b in tr.blocks if len(b) > 2]
    assert len(set(thirds)) > len(thirds) // 8  # past the system prompt, sessions diverge


def test_hashes_depend_on_the_whole_prefix():
    a = block_hashes([(0, BLOCK_TOKENS), (7, BLOCK_TOKENS)], 2 * BLOCK_TOKENS)
    b = block_hashes([(1, BLOCK_TOKENS), (7, BLOCK_TOKENS)], 2 * BLOCK_TOKENS)
    assert a[1] != b[1]  # the same second segment after another first block: another block
    assert block_hashes([(0, 100), (5, 412)], 512) != block_hashes([(0, 101), (5, 411)], 512)
    assert block_hashes([(0, 511)], 511) == ()


def test_the_chat_dataset_is_deterministic_replayable_and_bounded():
    t = WorkloadTemplate("chat", num_requests=300, seed=2, max_context=8192)
    again = WorkloadTemplate("chat", num_requests=300, seed=2, max_context=8192)
    assert t.has_blocks and t.replay and len(t) == 300
    assert [r.blocks for r in t.at_rate(2.0)] == [r.blocks for r in again.at_rate(2.0)]
    assert all(r.prompt_tokens + r.output_tokens <= 16_384 for r in t.at_rate(None))
    other = WorkloadTemplate("chat", num_requests=300, seed=3)
    assert [r.blocks for r in other.at_rate(None)] != [r.blocks for r in t.at_rate(None)]
    with pytest.raises(ValueError):
        ChatSessions(min_turns=3, max_turns=2)
