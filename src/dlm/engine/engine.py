"""The engine: a request queue, a scheduler and a model runner serving many requests at once.

    engine = Engine(model, EngineConfig(policy="stationary"))
    with engine:                                   # starts the step loop thread
        request = engine.submit(ids, sampler="isd", gen_length=64)
        completion = request.result()              # or read request.events while it runs

Every running request has a worker thread that runs its sampler - any of dlm's samplers, with
its own options, canvas, caches and random generators - through a :class:`ModelProxy`. The step
loop waits until every running request has asked for its next forward pass (or finished), runs
all those passes as a few batched forwards (:func:`dlm.engine.runner.execute`), and between
steps retires finished requests and admits waiting ones (:mod:`dlm.engine.scheduler`). A
request's output therefore does not depend on what else runs: at T = 0 it is the same alone and
in any batch, and with a seed its random draws are its own.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch

from dlm.engine.request import (CANCELLED, FAILED, FINISHED, RUNNING, Cancelled, Completion, Event, Request)
from dlm.engine.runner import Call, ModelProxy, execute
from dlm.engine.scheduler import EngineConfig, Scheduler
from dlm.errors import DLMError


class Engine:
    def __init__(self, model, config: EngineConfig | None = None, metrics=None):
        self.model = model
        self.config = config or EngineConfig()
        self.scheduler = Scheduler(self.config)
        self.metrics = metrics  # optional observer: forward(rows, seconds), finished(completion), gauges(...)
        self.running: list[Request] = []
        self.cv = threading.Condition()
        self.pending: dict[int, Call] = {}  # request id -> the call it waits on
        self.done: set[int] = set()
        self.steps = 0
        self.forwards = 0
        self._stop = False
        self._thread: threading.Thread | None = None
        model.eval()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="dlm-engine", daemon=True)
            self._thread.start()
        return self

    def cancel_all(self) -> None:
        """Cancel every waiting and running request (they end at the next step); the engine keeps running."""
        for r in list(self.scheduler.waiting) + list(self.running):
            r.cancel()

    def stop(self) -> None:
        """Cancel everything and end the loop."""
        self.cancel_all()
        with self.cv:
            self._stop = True
            self.cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- requests ----------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], sampler: str | None = None, seed: int | None = None,
               stream_steps: bool = False, **options: Any) -> Request:
        """Validate a request as ``dlm.generate`` would (a DLMError names what is wrong), queue it and
        return it; read its events or call ``result()``. :class:`EngineFull` when the queue is full."""
        from dlm.models.lengths import check_length
        from dlm.sampling import default_sampler, prepare_sampler
        from dlm.sampling.output import make_generators

        if self._thread is None:
            raise DLMError("the engine is not running: call start() (or use it as a context manager)")
        sampler = sampler or default_sampler(self.model)
        smp = prepare_sampler(self.model, sampler, options)
        check_prompt(self.model, prompt_ids, smp)
        make_generators(seed, 1, "cpu")  # a bad seed fails here, not in the worker
        G = smp.gen_length()
        rows = 2 if float(getattr(smp.opts, "cfg_scale", 0.0)) > 0 else 1
        check_length(self.model, rows, len(prompt_ids) + G, f"prompt ({len(prompt_ids)}) + gen_length ({G})")
        request = Request(list(prompt_ids), sampler, dict(options), G, seed=seed, stream_steps=stream_steps)
        self.scheduler.add(request)
        with self.cv:
            self.cv.notify_all()
        return request

    def generate(self, prompt_ids: list[int], timeout: float | None = None, **kwargs) -> Completion:
        return self.submit(prompt_ids, **kwargs).result(timeout=timeout)

    @property
    def queue_depth(self) -> int:
        return self.scheduler.depth

    # -- the step loop -----------------------------------------------------------------------
    def _post(self, call: Call):
        """A worker hands over one forward pass and waits for the step that runs it."""
        if call.request.cancelled.is_set():
            raise Cancelled("cancelled")
        with self.cv:
            self.pending[call.request.id] = call
            self.cv.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def _ready(self) -> bool:
        return self._stop or all(r.id in self.pending or r.id in self.done for r in self.running)

    def _loop(self) -> None:
        with torch.no_grad():
            while True:
                for r in self.scheduler.drop_cancelled():
                    r.post(Event("error", error="cancelled before it started"))
                for r in self.scheduler.admit(self.running):
                    self._start_worker(r)
                self._gauges()
                with self.cv:
                    if not self.running:
                        if self._stop:
                            return
                        self.cv.wait(timeout=0.05)
                        continue
                    self.cv.wait_for(self._ready)
                    if self._stop and not self.running:
                        return
                    finished = [r for r in self.running if r.id in self.done]
                    calls = [self.pending.pop(r.id) for r in self.running if r.id in self.pending]
                for r in finished:
                    self.running.remove(r)
                    self.done.discard(r.id)
                if calls:
                    if self._stop:
                        for call in calls:
                            call.request.cancel()
                    execute(self.model, calls, self.config.separate_prefill, self._on_forward)
                    self.steps += 1

    def _on_forward(self, rows: int, seconds: float) -> None:
        self.forwards += 1
        if self.metrics is not None:
            self.metrics.forward(rows, seconds)

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.gauges(queue=self.scheduler.depth, running=len(self.running))

    def _start_worker(self, request: Request) -> None:
        request.status, request.started = RUNNING, time.perf_counter()
        self.running.append(request)
        threading.Thread(target=self._work, args=(request,), name=f"dlm-request-{request.id}", daemon=True).start()

    def _work(self, r: Request) -> None:
        from dlm.sampling import generate
        from dlm.sampling.batching import answer_ids

        P = len(r.prompt_ids)
        proxy = ModelProxy(self.model, self._post, r)
        try:
            ids = torch.tensor([r.prompt_ids], dtype=torch.long, device=self.model.device)
            out = generate(proxy, ids, sampler=r.sampler, seed=r.seed, return_dict=True,
                           on_step=lambda state: r.emit_step(state.x[0, P:], state.nfe), **r.options)
            generated = out.generated[0].tolist()
            answer = answer_ids(self.model, generated)
            now = time.perf_counter()
            completion = Completion(
                request_id=r.id, prompt_ids=r.prompt_ids, generated=generated, answer=answer,
                finish_reason="stop" if len(answer) < len(generated) else "length", nfe=out.nfe, steps=r.steps,
                seconds=now - r.submitted, queued_seconds=r.started - r.submitted, stats=out.stats)
            r.status = FINISHED
            if self.metrics is not None:
                self.metrics.finished(completion)
            r.post(Event("done", step=r.steps, nfe=out.nfe, result=completion))
        except Cancelled:
            r.status = CANCELLED
            r.post(Event("error", error="cancelled"))
        except Exception as e:  # noqa: BLE001 - reported to the request's client, never kills the engine
            r.status = FAILED
            r.post(Event("error", error=str(e) or type(e).__name__))
        finally:
            with self.cv:
                self.done.add(r.id)
                self.cv.notify_all()


def check_prompt(model, prompt_ids, sampler) -> None:
    """A request's prompt: a non-empty list of token ids inside the vocabulary (``dlm.generate``'s checks)."""
    from dlm.sampling import _check_inputs

    if not isinstance(prompt_ids, (list, tuple)) or not prompt_ids:
        raise DLMError("the prompt is empty")
    if any(isinstance(t, bool) or not isinstance(t, int) for t in prompt_ids):
        raise DLMError("prompt token ids must be integers")
    mask_id = getattr(sampler.opts, "mask_id", None)
    try:
        ids = torch.tensor([prompt_ids], dtype=torch.long)
    except (OverflowError, RuntimeError, ValueError):  # torch raises ValueError past 64 bits
        raise DLMError("prompt token ids must fit in 64 bits") from None
    _check_inputs(model, ids, None, mask_id if mask_id is not None else model.facts.resolve_mask_id())
