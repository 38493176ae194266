"""Commands in, status out, on the EngineCore main thread.

Two ways in, one handler (``Controller.handle``: bytes in, bytes out):
- HTTP: the endpoint plugin calls the EngineCore utility method
  ``ecoserve_command`` (installed below); vLLM runs it between steps and wakes
  an idle engine for it.
- ZeroMQ: ``drain`` reads the command socket before every step and whenever
  the idle engine loop is woken for it (see channel.py).
Replies are the fresh status, taken after the command was applied, or an
ErrorReply; a malformed command never raises into the engine loop. A phase
command may carry a lease (lease.py): unrenewed, the phase lapses back to
the startup one.
"""

from __future__ import annotations

import logging

import msgspec

from ecoserve.protocol import EngineAddresses, EngineStatus, ErrorReply, PhaseCommand, decode_command, encode
from vllm_plugin import SCHEDULER_CLS
from vllm_plugin.channel import ZmqChannel
from vllm_plugin.lease import PhaseLease

logger = logging.getLogger("vllm.ecoserve")  # under vLLM's handlers and format

UTILITY_METHOD = "ecoserve_command"


class Controller:
    def __init__(self, scheduler, engine_core=None) -> None:
        self._scheduler = scheduler
        self._wake = _waker(engine_core)
        self.channel = ZmqChannel(wake=self._wake)
        self.lease = PhaseLease(self._wake)
        self._startup_phase = scheduler.eco_phase  # where a lapsed lease falls back to
        self.addresses = EngineAddresses(status=self.channel.status_address, command=self.channel.command_address)
        logger.info(
            "EcoServe scheduler ready: phase=%s status=%s command=%s",
            scheduler.eco_phase,
            self.addresses.status,
            self.addresses.command,
        )

    def handle(self, raw: bytes | str) -> bytes:
        try:
            if not isinstance(raw, (bytes, str)):
                raise TypeError(f"expected a JSON command, got {type(raw).__name__}")
            command = decode_command(raw)
        except (msgspec.DecodeError, TypeError) as e:
            return encode(ErrorReply(error=f"rejected command: {e}"))
        try:
            if isinstance(command, PhaseCommand):
                if any(x is not None for x in (command.prompt_budget, command.tpot_s, command.step_budget, command.ttft_s)):
                    self._scheduler.eco_budget.command(command.prompt_budget, command.tpot_s, command.step_budget,
                                                       command.ttft_s)
                self._scheduler.eco_set_phase(command.phase)
                self.lease.grant(command.lease_s)
            return encode(self._scheduler.eco_status(recent=True))
        except Exception as e:  # keep serving whatever happens
            logger.exception("EcoServe command failed")
            return encode(ErrorReply(error=f"command failed: {e!r}"))

    def drain(self) -> None:
        """Apply the ZeroMQ commands that arrived, and a lapsed phase lease;
        called before every step and whenever the idle engine loop wakes."""
        for envelope, raw in self.channel.receive():
            self.channel.reply(envelope, self.handle(raw))
        if self.lease.expired():
            logger.warning("EcoServe: phase lease ran out without renewal (coordinator gone?): phase %s -> %s",
                           self._scheduler.eco_phase, self._startup_phase)  # fmt: skip
            self._scheduler.eco_set_phase(self._startup_phase)

    def publish(self, status: EngineStatus) -> None:
        self.channel.publish(encode(status))

    def close(self) -> None:
        self.lease.close()
        self.channel.close()


def _waker(engine_core):
    queue = getattr(engine_core, "input_queue", None)
    if queue is None:
        logger.warning("EcoServe: EngineCore input queue not found; ZeroMQ commands apply at the next step only")
        return lambda: None
    from vllm.v1.engine import EngineCoreRequestType

    wakeup = (EngineCoreRequestType.WAKEUP, None)
    return lambda: queue.put_nowait(wakeup)


def _ecoserve_command(self, raw: bytes) -> bytes:
    """EngineCore utility method: run one EcoServe command on the engine thread."""
    control = getattr(self.scheduler, "eco_control", None)
    if control is None:
        return encode(
            ErrorReply(
                error=f"this engine does not run the EcoServe scheduler; start vLLM with --scheduler-cls {SCHEDULER_CLS}"
            )
        )
    return control.handle(raw)


def install_engine_core_methods() -> None:
    """Add the utility method to vLLM's EngineCore class (idempotent)."""
    from vllm.v1.engine.core import EngineCore

    if getattr(EngineCore, UTILITY_METHOD, None) is not _ecoserve_command:
        setattr(EngineCore, UTILITY_METHOD, _ecoserve_command)
