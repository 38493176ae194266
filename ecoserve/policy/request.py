"""What the policy knows about one request: the facts its decisions depend on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class RequestState:
    id: str
    arrival: float
    prompt_tokens: int
    max_output_tokens: int
    routed_at: float | None = None
    instance_id: str | None = None
    # Which of its instance's prefill windows it was routed into (the instance's
    # window_seq): tells "in the open window" from "already decoding".
    window: int | None = None
    first_token_at: float | None = None
    tokens_out: int = 0
    finished_at: float | None = None
    kv_reserved: int = 0  # tokens of KV this request holds a reservation for
    predicted_prefill: float = 0.0  # seconds, predicted when it was routed
    trickled: bool = False  # routed outside any window, to be prefilled in chunks beside decodes
    # Hashes of the prompt's full blocks (policy/prefix_index.py): what an
    # instance's prefix cache may already hold. Empty: unknown, nothing reused.
    blocks: tuple[int, ...] = ()
    cached_tokens: int = 0  # prompt tokens predicted to come from its instance's cache, when routed
    # The blocks of its prompt it shares in its instance's pool (InstanceState.pooled):
    # counted there once, not in its own kv_reserved.
    pooled: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0 or self.max_output_tokens < 1:
            raise ValueError(
                f"request {self.id}: prompt_tokens must be >= 0 and max_output_tokens >= 1, "
                f"got {self.prompt_tokens} and {self.max_output_tokens}"
            )

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def started(self) -> bool:
        """Has produced its first token."""
        return self.first_token_at is not None

    def saved_tpot(self, now: float, tpot_slo: float) -> float:
        """Decode slack ("saved TPOT"): how long decoding may pause now and the
        request still meet its TPOT SLO, read like a typewriter.

        With L tokens out (the first included) at time t_first + d, the next
        token is due by t_first + L * TPOT; so the pause budget is
        L * TPOT - (now - t_first). The paper counts L "since the first token";
        counting the first as well is what makes a request that just started
        hold exactly one TPOT of slack rather than none.
        """
        assert self.first_token_at is not None
        return self.tokens_out * tpot_slo - (now - self.first_token_at)
