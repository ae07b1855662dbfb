"""Prometheus metrics of one server (its own registry, served at ``/metrics``).

The engine reports to :class:`ServerMetrics` (``forward``, ``finished``, ``gauges``); the HTTP
layer counts requests by outcome and observes end-to-end latency.
"""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    def __init__(self, window_seconds: float = 30.0):
        r = self.registry = CollectorRegistry()
        self.queue_depth = Gauge("dlm_queue_depth", "requests waiting for a slot", registry=r)
        self.running = Gauge("dlm_running_requests", "requests in the running batch", registry=r)
        self.batch_size = Histogram("dlm_batch_size", "rows per batched forward pass", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.forward_seconds = Histogram("dlm_forward_seconds", "seconds per batched forward pass",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.forwards = Counter("dlm_forward_passes", "batched forward passes run", registry=r)
        self.tokens = Counter("dlm_generated_tokens", "answer tokens generated", registry=r)
        self.tokens_per_second = Gauge("dlm_tokens_per_second",
                                       f"answer tokens per second over the last {window_seconds:g} s", registry=r)
        self.nfe = Histogram("dlm_request_nfe", "forward passes per request", buckets=(1, 2, 4, 8, 16, 32, 64, 128,
                                                                                        256, 512, 1024), registry=r)
        self.tpf = Histogram("dlm_tokens_per_forward", "answer tokens per forward pass of a request (TPF)",
                             buckets=(0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 16), registry=r)
        self.latency = Histogram("dlm_request_latency_seconds", "seconds from submission to the last token",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("dlm_request_queue_seconds", "seconds a request waited for a slot",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("dlm_requests", "HTTP generation requests by outcome", ["outcome"], registry=r)
        self._window = window_seconds
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    # -- the engine's observer interface ------------------------------------------------------
    def forward(self, rows: int, seconds: float) -> None:
        self.forwards.inc()
        self.batch_size.observe(rows)
        self.forward_seconds.observe(seconds)

    def gauges(self, queue: int, running: int) -> None:
        self.queue_depth.set(queue)
        self.running.set(running)

    def finished(self, completion) -> None:
        n = len(completion.answer)
        self.tokens.inc(n)
        self.nfe.observe(completion.nfe)
        if completion.nfe:
            self.tpf.observe(n / completion.nfe)
        self.latency.observe(completion.seconds)
        self.queue_seconds.observe(completion.queued_seconds)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, n))
        self._update_rate(now)

    def _update_rate(self, now: float) -> None:
        with self._lock:
            while self._recent and self._recent[0][0] < now - self._window:
                self._recent.popleft()
            self.tokens_per_second.set(sum(n for _, n in self._recent) / self._window)

    def render(self) -> bytes:
        self._update_rate(time.monotonic())
        return generate_latest(self.registry)
