"""One request's life in the engine: what was asked, where it stands, and what it streams back.

A :class:`Request` goes ``waiting`` -> ``running`` -> ``finished`` (or ``cancelled`` / ``failed``).
While it runs, a worker thread drives its sampler (``dlm.generate`` on a batch of one, with its
own canvas, caches and random generators); every forward pass the sampler asks for is handed to
the engine's runner, which batches it with the other running requests' passes. The client side
reads :class:`Event` objects from ``events`` (a thread-safe queue): one ``"step"`` per denoising
step (the canvas, for streaming) and a last ``"done"`` or ``"error"``.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

WAITING, RUNNING, FINISHED, CANCELLED, FAILED = "waiting", "running", "finished", "cancelled", "failed"

_ids = itertools.count(1)


class Cancelled(Exception):
    """Raised inside a request's worker when its request was cancelled (a client went away)."""


@dataclass
class Event:
    kind: str  # "step" | "done" | "error"
    step: int = 0  # steps taken so far
    nfe: int = 0  # forward passes so far
    canvas: list[int] | None = None  # "step": the generated region (G ids, the mask id where masked)
    result: "Completion | None" = None  # "done"
    error: str | None = None  # "error" / "done" of a cancelled request


@dataclass
class Completion:
    """A finished request: what :meth:`dlm.engine.Engine.generate` returns."""

    request_id: int
    prompt_ids: list[int]
    generated: list[int]  # the whole generated region (G ids)
    answer: list[int]  # generated ids before the first stop token
    finish_reason: str  # "stop" (a stop token ended the answer) or "length"
    nfe: int
    steps: int
    seconds: float  # from submission to the end (queueing included)
    queued_seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Request:
    prompt_ids: list[int]
    sampler: str
    options: dict[str, Any]  # validated sampler options (gen_length included)
    gen_length: int
    seed: int | None = None
    stream_steps: bool = False  # emit a "step" event per denoising step
    id: int = field(default_factory=lambda: next(_ids))
    status: str = WAITING
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    events: "queue.Queue[Event]" = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    first_call_done: bool = False  # whether its first forward pass (the prefill) has run
    steps: int = 0
    nfe: int = 0
    listener: Callable[[], None] | None = None  # called after each event (the server wakes its reader)

    def post(self, event: Event) -> None:
        self.events.put(event)
        listener = self.listener
        if listener is not None:
            try:
                listener()
            except RuntimeError:  # the reader's event loop is gone (its client left)
                pass

    @property
    def tokens(self) -> int:
        """Canvas tokens it holds while running (what the token budget counts)."""
        return len(self.prompt_ids) + self.gen_length

    def cancel(self) -> None:
        """Ask the engine to drop this request: a waiting one leaves the queue, a running one frees
        its slot and cache at the next step."""
        self.cancelled.set()

    def emit_step(self, canvas: torch.Tensor, nfe: int) -> None:
        self.steps += 1
        self.nfe = nfe
        if self.stream_steps:
            self.post(Event("step", step=self.steps, nfe=nfe, canvas=canvas.tolist()))

    def result(self, timeout: float | None = None) -> Completion:
        """Block until the request ends; its :class:`Completion`, or the error / cancellation raised."""
        from dlm.errors import DLMError

        while True:
            event = self.events.get(timeout=timeout)
            if event.kind == "done":
                return event.result
            if event.kind == "error":
                if self.status == CANCELLED:
                    raise Cancelled(event.error)
                raise DLMError(event.error)
