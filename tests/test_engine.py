"""dlm.engine: every sampler inside the engine, outputs independent of the batch, policies, budget, cancel."""

import random
import threading
import time

import pytest
import torch

import dlm
from conftest import make_tiny_llada
from dlm.engine import Cancelled, Engine, EngineConfig, EngineFull
from dlm.errors import DLMError
from dlm.models.dsl import new_dsl


@pytest.fixture(scope="module")
def llada():
    return make_tiny_llada()


@pytest.fixture(scope="module")
def dsl_model():
    model = make_tiny_llada(seed=1)
    model.attach_dsl(new_dsl(model.input_embeddings().weight, model.facts.mask_id, noise_dim=16))
    return model


@pytest.fixture(scope="module")
def tiny_ar():
    return dlm.load("tiny-ar")


def _prompts(n, seed=0, vocab=60):
    rng = random.Random(seed)
    return [[rng.randrange(0, vocab) for _ in range(rng.randrange(1, 10))] for _ in range(n)]


def _alone(model, prompt, sampler, seed, options):
    out = dlm.generate(model, torch.tensor([prompt]), sampler=sampler, seed=seed, return_dict=True, **options)
    return out.generated[0].tolist(), out.nfe


CASES = [
    ("llada", "llada", dict(gen_length=16, steps=8, block_length=8)),
    ("llada", "llada", dict(gen_length=16, steps=8, temperature=1.0)),
    ("llada", "llada", dict(gen_length=12, steps=6, cfg_scale=1.0)),
    ("llada", "fast", dict(gen_length=16, threshold=0.3, block_length=8)),
    ("llada", "fast", dict(gen_length=16, threshold=0.3, block_length=8, cache="dual")),
    ("llada", "fast", dict(gen_length=16, steps=16, block_length=8, cache="prefix")),
    ("llada", "dream", dict(gen_length=16, steps=8)),
    ("dsl_model", "dsl", dict(gen_length=16, steps=8)),
    ("tiny_ar", "ar", dict(gen_length=20)),
    ("tiny_ar", "isd", dict(gen_length=20, stride=3)),
    ("llada", "remdm", dict(gen_length=16, steps=16, block_length=16)),
    ("llada", "edit", dict(gen_length=16, block_length=8, threshold=0.3, edit_threshold=0.2, max_post_edit_steps=2)),
    ("llada", "wino", dict(gen_length=16, block_length=8)),
    ("llada", "d3im", dict(gen_length=16, steps=8)),
]


@pytest.mark.parametrize("policy", ["stationary", "continuous"])
@pytest.mark.parametrize("which,sampler,options", CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_output_is_the_same_alone_and_in_a_batch(request, policy, which, sampler, options):
    model = request.getfixturevalue(which)
    prompts = _prompts(8, seed=len(options))
    alone = [_alone(model, p, sampler, 7, options) for p in prompts]
    with Engine(model, EngineConfig(policy=policy, max_absorb=3)) as engine:
        reqs = [engine.submit(p, sampler=sampler, seed=7, **options) for p in prompts]
        done = [r.result(timeout=120) for r in reqs]
    assert [d.generated for d in done] == [a[0] for a in alone]
    assert [d.nfe for d in done] == [a[1] for a in alone]
    if options.get("cache", "none") == "none" and sampler != "wino":  # Fast-dLLM's caches and wino's
        # shadow block (a custom attention pattern) run one request per pass
        assert engine.forwards < sum(d.nfe for d in done)  # passes were batched across requests


def test_different_samplers_lengths_and_budgets_share_steps(llada):
    jobs = [("llada", dict(gen_length=16, steps=8, block_length=8)), ("fast", dict(gen_length=8, threshold=0.5)),
            ("dream", dict(gen_length=24, steps=12)), ("llada", dict(gen_length=4, steps=4)),
            ("fast", dict(gen_length=16, block_length=4, cache="dual", threshold=0.2))] * 2
    prompts = _prompts(len(jobs), seed=3)
    rows = []
    metrics = type("M", (), {"forward": lambda self, n, s: rows.append(n), "gauges": lambda self, **k: None,
                             "finished": lambda self, c: None})()
    with Engine(llada, EngineConfig(), metrics=metrics) as engine:
        reqs = [engine.submit(p, sampler=s, seed=1, **o) for p, (s, o) in zip(prompts, jobs)]
        done = [r.result(timeout=120) for r in reqs]
    for d, p, (s, o) in zip(done, prompts, jobs):
        assert d.generated == _alone(llada, p, s, 1, o)[0]
    assert max(rows) > 2  # one forward carried several requests of different samplers and lengths


def test_serial_policy_runs_one_request_at_a_time(llada):
    rows = []
    metrics = type("M", (), {"forward": lambda self, n, s: rows.append(n), "gauges": lambda self, **k: None,
                             "finished": lambda self, c: None})()
    with Engine(llada, EngineConfig(policy="serial"), metrics=metrics) as engine:
        reqs = [engine.submit(p, sampler="llada", gen_length=8, steps=4) for p in _prompts(4)]
        [r.result(timeout=60) for r in reqs]
    assert rows and set(rows) == {1}


def test_token_budget_bounds_the_running_batch_and_queues_the_rest(llada):
    seen = []
    lock = threading.Lock()

    class Watch:
        def forward(self, rows, seconds):
            with lock:
                seen.append(sum(r.tokens for r in engine.running))

        def gauges(self, **kw):
            pass

        def finished(self, c):
            pass

    prompts = [[1, 2, 3, 4]] * 6  # 4 + 16 = 20 tokens each; budget 45: two at a time
    engine = Engine(llada, EngineConfig(token_budget=45), metrics=Watch())
    with engine:
        reqs = [engine.submit(p, sampler="llada", gen_length=16, steps=4) for p in prompts]
        assert engine.queue_depth >= 1 or any(r.status != "waiting" for r in reqs)
        [r.result(timeout=60) for r in reqs]
        with pytest.raises(DLMError, match="token budget"):
            engine.submit(list(range(1, 40)), sampler="llada", gen_length=16, steps=4)
    assert seen and max(seen) <= 45


def test_a_full_queue_refuses_new_requests(llada):
    with Engine(llada, EngineConfig(max_batch=1, max_waiting=2)) as engine:
        first = engine.submit([1, 2], sampler="llada", gen_length=64, steps=64)
        deadline = time.monotonic() + 30
        while first.status == "waiting" and time.monotonic() < deadline:
            time.sleep(0.01)
        reqs = [first] + [engine.submit([1, 2], sampler="llada", gen_length=64, steps=64) for _ in range(2)]
        with pytest.raises(EngineFull, match="retry later"):
            engine.submit([1, 2], sampler="llada", gen_length=64, steps=64)
        for r in reqs:
            r.cancel()


def test_cancel_frees_the_slot_and_spares_the_others(llada):
    with Engine(llada, EngineConfig()) as engine:
        slow = engine.submit([5, 6, 7], sampler="llada", gen_length=64, steps=64, stream_steps=True)
        other = engine.submit([8, 9], sampler="llada", gen_length=8, steps=4)
        assert slow.events.get(timeout=30).kind == "step"  # it is running
        slow.cancel()
        with pytest.raises(Cancelled):
            slow.result(timeout=30)
        assert other.result(timeout=30).generated == _alone(llada, [8, 9], "llada", None, dict(gen_length=8, steps=4))[0]
        deadline = time.monotonic() + 10
        while engine.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.running == [] and slow.status == "cancelled"
        assert slow.steps < 64


def test_stream_steps_report_every_canvas(llada):
    with Engine(llada) as engine:
        r = engine.submit([1, 2, 3], sampler="llada", gen_length=8, steps=4, stream_steps=True)
        events = []
        while not events or events[-1].kind == "step":
            events.append(r.events.get(timeout=30))
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == [1, 2, 3, 4] and [e.nfe for e in steps] == [1, 2, 3, 4]
    assert steps[-1].canvas == events[-1].result.generated
    assert sum(t == llada.facts.mask_id for t in steps[0].canvas) == 6  # 2 of 8 committed per step


@pytest.mark.parametrize("prompt,kwargs,match", [
    ([], {}, "empty"),
    ([1, 2, 999], {}, "outside the vocabulary"),
    ([1, True], {}, "integers"),
    ([1, 2], {"sampler": "nope"}, "unknown sampler"),
    ([1, 2], {"sampler": "llada", "gen_length": 10, "block_length": 4}, "block_length"),
    ([1, 2], {"sampler": "llada", "bogus": 1}, "no option"),
    ([1, 2], {"sampler": "llada", "seed": "x"}, "seed"),
    ([1, 2], {"sampler": "isd"}, "causal"),
])
def test_bad_requests_are_refused_at_submit(llada, prompt, kwargs, match):
    with Engine(llada) as engine:
        with pytest.raises(DLMError, match=match):
            engine.submit(prompt, **kwargs)
        assert engine.queue_depth == 0


def test_engine_config_is_validated(llada):
    for bad in (dict(policy="fifo"), dict(max_batch=0), dict(token_budget=-1), dict(max_waiting=True)):
        with pytest.raises(DLMError):
            Engine(llada, EngineConfig(**bad))
    with pytest.raises(DLMError, match="not running"):
        Engine(llada).submit([1, 2])
