"""`dlm serve` with no --model: the embedded default behind the real CLI process, with the openai client."""

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import torch

import dlm
from dlm.models.default import DEFAULT_MODEL
from serving import free_port

openai = pytest.importorskip("openai")


def test_serve_without_model_serves_the_default_and_stops_on_ctrl_c():
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dlm.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == [DEFAULT_MODEL]
        msgs = [{"role": "user", "content": "What does the package bash do?"}]
        r = client.chat.completions.create(model=DEFAULT_MODEL, messages=msgs, max_tokens=8)
        assert r.model_extra["dlm"]["sampler"] == "isd"
        model = dlm.load()
        ids = model.encode_prompt(msgs[0]["content"], chat=True)
        out = dlm.generate(model, torch.tensor([ids]), gen_length=8)
        from dlm.sampling.batching import answer_ids

        assert r.choices[0].message.content == model.decode(answer_ids(model, out[0, len(ids):].tolist()))
        # Ctrl-C with a stream open: the stream ends (an error chunk, [DONE]) and the server exits 0 at once
        lines = []
        body = {"messages": msgs, "max_tokens": 200, "stream": True}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                    if len(lines) == 2:  # once: a second Ctrl-C is uvicorn's force exit
                        proc.send_signal(signal.SIGINT)
        assert lines[-1] == "data: [DONE]" and "cancelled" in lines[-2]
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
