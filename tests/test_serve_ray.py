"""``dlm serve --replicas 2`` on Ray Serve, end to end: a real subprocess, the official openai client.

Two replicas of tiny-mdm behind one port answer concurrent and streamed completions exactly as
``dlm.generate`` does in this process (T = 0), both replicas serve, and SIGINT shuts everything
down with exit status 0. Skipped where Ray Serve is not installed (the missing-Ray error is checked
everywhere). About a minute on 2 CPUs (Ray and two replicas start in 30-50 s).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
import torch

import dlm
from dlm.engine import EngineConfig
from dlm.errors import DLMError
from dlm.sampling.batching import answer_ids
from dlm.server.replicas import RAY_MISSING, cpus_per_replica, serve_replicas
from serving import free_port

MODEL = "tiny-mdm"
PROMPTS = ["Hello", "Once upon a time", "The cat sat on", "1, 2, 3,"]
OPTIONS = {"steps": 4}
MAX_TOKENS = 8
START_TIMEOUT = 150  # Ray, the proxy and two replicas loading the model, on a busy 2-CPU machine
STOP_TIMEOUT = 60


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def expected_texts() -> dict[str, str]:
    """What the single-process path answers: dlm.generate, cut at the first stop token, decoded."""
    model = dlm.load(MODEL)
    out = {}
    for prompt in PROMPTS:
        ids = torch.tensor([model.encode_prompt(prompt, chat=False)])
        gen = dlm.generate(model, ids, gen_length=MAX_TOKENS, return_dict=True, **OPTIONS)
        out[prompt] = model.decode(answer_ids(model, gen.generated[0].tolist()))
    return out


def test_without_ray_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    with pytest.raises(DLMError) as e:
        serve_replicas("tiny-mdm", "tiny-mdm", 2, "127.0.0.1", 8000, EngineConfig())
    assert str(e.value) == RAY_MISSING


@pytest.mark.parametrize("cpus,replicas", [(2, 2), (1, 2), (2, 3), (16, 3), (3, 7)])
def test_replicas_fit_the_cpus(cpus, replicas):
    share = cpus_per_replica(cpus, replicas)
    assert 0 < share * replicas <= cpus and (share <= 1 or share == int(share))


def test_two_replicas_behind_one_port():
    pytest.importorskip("ray.serve")
    openai = pytest.importorskip("openai")
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)  # a local Ray, never a cluster this machine may know of
    expected = expected_texts()

    def start():  # a subprocess in its own process group, its output in a temporary file
        port = free_port()
        log = tempfile.TemporaryFile(mode="w+")
        proc = subprocess.Popen([sys.executable, "-m", "dlm.cli", "serve", "--model", MODEL, "--replicas", "2",
                                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: the finally can reap all of it
        return proc, log, f"http://127.0.0.1:{port}"

    def server_log() -> str:
        log.seek(0)
        return log.read()[-4000:]

    def kill(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    proc, log, base = start()
    try:
        t0 = time.monotonic()
        pids: set[int] = set()  # ready when both replicas answer /health (the proxy routes to the first one
        deadline = t0 + START_TIMEOUT  # before the second is up) and the command has said so: serve.run can
        # still be waiting when both replicas answer, and a Ctrl-C before that line abandons the start (130)
        while len(pids) < 2 or "dlm: serving" not in server_log():
            assert proc.poll() is None, f"dlm serve exited with {proc.returncode}:\n{server_log()}"
            assert time.monotonic() < deadline, f"two replicas not up after {START_TIMEOUT} s:\n{server_log()}"
            health = get_json(f"{base}/health")
            if health is not None and health.get("status") == "ok" and health.get("model") == MODEL:
                pids.add(health["pid"])
            time.sleep(0.5)
        started = time.monotonic() - t0

        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == [MODEL]

        def complete(prompt: str):
            r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS,
                                          extra_body={"dlm": OPTIONS})
            return prompt, r

        # Every replica's engine numbers its requests 1, 2, ... (response ids cmpl-1, cmpl-2, ...): an id
        # seen twice means two engines served. Routing is Ray's (power of two choices), so a round may in
        # principle land on one replica; a few rounds make that vanishingly unlikely.
        ids: list[str] = []
        rounds = 0
        while len(ids) == len(set(ids)) and rounds < 4:
            rounds += 1
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                results = list(pool.map(complete, PROMPTS * 2))
            for prompt, r in results:
                choice = r.choices[0]
                assert r.model == MODEL and choice.finish_reason in ("length", "stop")
                assert choice.text == expected[prompt], (prompt, choice.text, expected[prompt])
                assert r.usage.completion_tokens <= MAX_TOKENS
                ids.append(r.id)
        assert len(ids) != len(set(ids)), f"one replica served every request: {ids}"

        stream = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=MAX_TOKENS, stream=True,
                                           extra_body={"dlm": OPTIONS})
        chunks = list(stream)
        assert "".join(c.choices[0].text for c in chunks) == expected[PROMPTS[1]]
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")
        assert all(c.choices[0].finish_reason is None for c in chunks[:-1])

        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
            assert b"dlm_requests_total" in r.read()

        proc.send_signal(signal.SIGINT)  # Ctrl-C: serve.shutdown(), ray.shutdown(), exit 0
        t1 = time.monotonic()
        assert proc.wait(timeout=STOP_TIMEOUT) == 0, server_log()
        print(f"\nstarted in {started:.1f} s, {rounds} round(s) of 8 requests, stopped in "
              f"{time.monotonic() - t1:.1f} s")
        assert get_json(f"{base}/health") is None  # the port is closed
    finally:  # whatever happened, nothing of this server outlives the test
        kill(proc)
        log.close()
