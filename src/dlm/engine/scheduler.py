"""Admission: which waiting requests join the running batch, and when.

Three policies (``EngineConfig.policy``), all first come, first served and bounded by the same
memory budget - the canvas tokens (prompt + gen_length) of the running requests may not exceed
``token_budget``, and at most ``max_batch`` requests run at once. A request that does not fit
waits (back-pressure); a queue of ``max_waiting`` refuses new ones (:class:`EngineFull`).

* ``"continuous"``: between any two steps, admit every waiting request that fits. A newly
  admitted request's first forward pass (its prefill) runs as its own batch, apart from the
  running requests' passes: a step that admits requests runs two forwards.
* ``"stationary"`` (I-DLM's stationary batch): the running batch is kept across steps - finished
  requests leave it in place - and waiting requests are absorbed inline, at most ``max_absorb``
  per step, their prefill riding the same forward as everyone's next pass.
* ``"serial"``: one request at a time (the baseline a batching engine is measured against).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

from dlm.engine.request import CANCELLED, Request
from dlm.errors import DLMError

POLICIES = ("continuous", "stationary", "serial")


class EngineFull(DLMError):
    """The waiting queue is full: the caller should retry later (HTTP 503)."""


@dataclass
class EngineConfig:
    policy: str = "stationary"
    max_batch: int = 32  # requests running at once
    token_budget: int = 16384  # canvas tokens (prompt + gen_length) of the running requests
    max_waiting: int = 256  # queued requests before submissions are refused
    max_absorb: int = 16  # stationary: waiting requests absorbed per step

    def validate(self) -> None:
        if self.policy not in POLICIES:
            raise DLMError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        for name in ("max_batch", "token_budget", "max_waiting", "max_absorb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DLMError(f"{name} must be a positive integer, got {value!r}")

    @property
    def batch_limit(self) -> int:
        return 1 if self.policy == "serial" else self.max_batch

    @property
    def separate_prefill(self) -> bool:
        """Whether a newly admitted request's first pass runs apart from the running batch."""
        return self.policy == "continuous"


class Scheduler:
    def __init__(self, config: EngineConfig):
        config.validate()
        self.config = config
        self.waiting: collections.deque[Request] = collections.deque()
        self.lock = threading.Lock()

    def check_fits(self, request: Request) -> None:
        """Refuse a request that could never run: more canvas tokens than the whole budget."""
        if request.tokens > self.config.token_budget:
            raise DLMError(f"prompt ({len(request.prompt_ids)} tokens) + gen_length ({request.gen_length}) = "
                           f"{request.tokens} tokens is more than the engine's token budget "
                           f"({self.config.token_budget})")

    def add(self, request: Request) -> None:
        self.check_fits(request)
        with self.lock:
            if len(self.waiting) >= self.config.max_waiting:
                raise EngineFull(f"the engine is full ({self.config.max_waiting} requests waiting); retry later")
            self.waiting.append(request)

    def drop_cancelled(self) -> list[Request]:
        """Remove cancelled requests from the queue and return them."""
        with self.lock:
            gone = [r for r in self.waiting if r.cancelled.is_set()]
            for r in gone:
                self.waiting.remove(r)
                r.status = CANCELLED
        return gone

    def admit(self, running: list[Request]) -> list[Request]:
        """Waiting requests (in arrival order) that join ``running`` now."""
        cfg = self.config
        limit = cfg.max_absorb if cfg.policy == "stationary" and running else cfg.batch_limit
        used = sum(r.tokens for r in running)
        admitted: list[Request] = []
        with self.lock:
            while self.waiting and len(running) + len(admitted) < cfg.batch_limit and len(admitted) < limit:
                head = self.waiting[0]
                if used + head.tokens > cfg.token_budget:
                    break  # first come, first served: no overtaking
                admitted.append(self.waiting.popleft())
                used += head.tokens
        return admitted

    @property
    def depth(self) -> int:
        return len(self.waiting)
