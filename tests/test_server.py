"""dlm serve's HTTP API through the official openai client and raw HTTP: completions, chat, streaming,
the canvas extension, errors, models, health, metrics, disconnects, and the CLI."""

import json
import subprocess
import sys
import time

import httpx
import pytest
import torch

import dlm
from dlm.engine import EngineConfig
from serving import free_port, running_server

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def model():
    return dlm.load("tiny-mdm")


@pytest.fixture(scope="module")
def server(model):
    with running_server(model, "tiny-mdm", EngineConfig(token_budget=4096)) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def chat_model():
    return dlm.load("tiny-mdm-instruct")


@pytest.fixture(scope="module")
def chat_client(chat_model):
    with running_server(chat_model, "tiny-mdm-instruct") as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def _alone_text(model, ids, **options):
    out = dlm.generate(model, torch.tensor([ids]), sampler="llada", **options)
    from dlm.sampling.batching import answer_ids

    return model.decode(answer_ids(model, out[0, len(ids):].tolist()))


def test_completion_matches_dlm_generate(model, client):
    r = client.completions.create(model="tiny-mdm", prompt="The package", max_tokens=16,
                                  extra_body={"dlm": {"sampler": "llada", "steps": 8, "block_length": 8}})
    ids = model.encode_prompt("The package", chat=False)
    assert r.choices[0].text == _alone_text(model, ids, gen_length=16, steps=8, block_length=8)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens <= 16
    assert r.model_extra["dlm"]["nfe"] == 8 and r.model_extra["dlm"]["sampler"] == "llada"


def test_stream_gives_the_same_text_in_order(client):
    kwargs = dict(model="tiny-mdm", prompt="Debian is", max_tokens=24,
                  extra_body={"dlm": {"steps": 12, "block_length": 8}})
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage.completion_tokens >= 0
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) >= 2  # the blocks streamed as they committed


@pytest.mark.parametrize("sampler,options", [
    ("remdm", {"steps": 8, "block_length": 8, "temperature": 0.0}),
    ("edit", {"block_length": 8, "threshold": 0.3, "edit_threshold": 0.2}),
    ("wino", {"block_length": 8}),
    ("d3im", {"steps": 8}),
])
def test_revision_samplers_stream_their_final_text_once(model, client, sampler, options):
    kwargs = dict(model="tiny-mdm", prompt="Debian is", max_tokens=16, seed=3,
                  extra_body={"dlm": {"sampler": sampler, **options}})
    whole = client.completions.create(**kwargs).choices[0].text
    ids = model.encode_prompt("Debian is", chat=False)
    out = dlm.generate(model, torch.tensor([ids]), sampler=sampler, gen_length=16, seed=[3], **options)
    from dlm.sampling.batching import answer_ids

    assert whole == model.decode(answer_ids(model, out[0, len(ids):].tolist()))
    chunks = list(client.completions.create(stream=True, **kwargs))
    pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert "".join(pieces) == whole
    assert len(pieces) <= 1  # text a revision sampler may still change is never sent


def test_chat_completion_and_stream(chat_model, chat_client):
    model, client = chat_model, chat_client
    msgs = [{"role": "user", "content": "What does the package bash do?"}]
    r = client.chat.completions.create(model="tiny-mdm-instruct", messages=msgs, max_tokens=16,
                                       extra_body={"dlm": {"steps": 8}})
    ids = model.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert r.choices[0].message.content == _alone_text(model, list(ids), gen_length=16, steps=8)
    assert r.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model="tiny-mdm-instruct", messages=msgs, max_tokens=16, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"dlm": {"steps": 8}})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == r.usage.total_tokens


def test_canvas_extension_streams_every_step(server, model):
    body = {"prompt": "Hello", "max_tokens": 8, "stream": True, "dlm": {"steps": 4, "canvas": True}}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=60) as resp:
        lines = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    canvases = [json.loads(x)["dlm_canvas"] for x in lines[:-1] if "dlm_canvas" in json.loads(x)]
    assert [c["step"] for c in canvases] == [1, 2, 3, 4]
    assert [c["states"].count(0) for c in canvases] == [6, 4, 2, 0]  # 2 of 8 committed per step
    assert canvases[1]["states"].count(1) == 2 and canvases[1]["states"].count(2) == 2
    assert all((p is None) == (s == 0) for c in canvases for p, s in zip(c["pieces"], c["states"]))


def test_seeded_sampling_is_reproducible(client):
    kwargs = dict(model="tiny-mdm", prompt="A", max_tokens=8, temperature=1.0, seed=11,
                  extra_body={"dlm": {"steps": 4}})
    assert client.completions.create(**kwargs).choices[0].text == client.completions.create(**kwargs).choices[0].text


def test_stop_strings_cut_the_answer(client):
    base = client.completions.create(model="tiny-mdm", prompt="The", max_tokens=16,
                                     extra_body={"dlm": {"steps": 8}}).choices[0].text
    if len(base.strip()) < 3:
        pytest.skip("the tiny model's answer is too short to cut")
    stop = base.strip()[1:3]
    r = client.completions.create(model="tiny-mdm", prompt="The", max_tokens=16, stop=[stop],
                                  extra_body={"dlm": {"steps": 8}})
    assert r.choices[0].text == base[:base.find(stop)] and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("body,status,match", [
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10**9}, 400, "steps"),
    ({"prompt": "x", "max_tokens": 100000, "dlm": {"steps": 8}}, 400, "gen_length"),
    ({"prompt": "x", "dlm": {"sampler": "nope"}}, 400, "unknown sampler"),
    ({"prompt": "x", "dlm": {"steps": -2}}, 400, "steps"),
    ({"prompt": "x", "dlm": {"sampler": "isd"}}, 400, "causal"),
    ({"prompt": "x", "n": 2}, 400, "n must be 1"),
    ({"prompt": "x", "logprobs": 2}, 400, "logprobs"),
    ({"prompt": "x", "frobnicate": True}, 400, "frobnicate"),
    ({"prompt": ""}, 400, "empty"),
    ({"prompt": [1, 2, 10**6]}, 400, "vocabulary"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "not served"),
    ({"prompt": "x", "max_tokens": 4, "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "dlm": {"gen_length": 8}, "max_tokens": 8}, 400, "not both"),
    ({"messages": []}, 400, "prompt"),
    ({"prompt": "x", "stream": "yes"}, 400, "stream"),
    ({"prompt": "x", "temperature": 1e-45, "dlm": {"sampler": "dream"}}, 400, "temperature"),
    ({"prompt": "x", "dlm": {"sampler": "dream", "alg_temp": 1e308}}, 400, "alg_temp"),
    ({"prompt": "x", "dlm": {"cfg_scale": 1e308}}, 400, "cfg_scale"),
    ({"prompt": "x", "dlm": {"seed": 3}}, 400, "seed"),
])
def test_bad_requests_get_a_json_4xx(server, body, status, match):
    r = httpx.post(f"{server}/v1/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert match in r.json()["error"]["message"]


@pytest.mark.parametrize("content,headers", [
    (b"{not json", {"content-type": "application/json"}),
    (b"\xff\xfe\x00garbage", {"content-type": "application/json"}),
    (b'["a list"]', {"content-type": "application/json"}),
    (b'{"prompt": "x"}', {"content-type": "text/plain"}),
    (b'{"prompt": "' + b"a" * (2 << 20) + b'"}', {"content-type": "application/json"}),
])
def test_malformed_bodies_get_a_json_4xx(server, content, headers):
    r = httpx.post(f"{server}/v1/completions", content=content, headers=headers, timeout=30)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["message"]


def test_chat_without_a_template_is_refused(server):
    r = httpx.post(f"{server}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "chat template" in r.json()["error"]["message"]


def test_models_health_metrics_and_unknown_routes(server, client):
    assert [m.id for m in client.models.list()] == ["tiny-mdm"]
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["running"] == 0
    client.completions.create(model="tiny-mdm", prompt="x", max_tokens=8, extra_body={"dlm": {"steps": 4}})
    text = httpx.get(f"{server}/metrics").text
    for name in ("dlm_queue_depth", "dlm_running_requests", "dlm_batch_size_bucket", "dlm_tokens_per_second",
                 "dlm_request_nfe_bucket", "dlm_tokens_per_forward_bucket", "dlm_request_latency_seconds_bucket",
                 'dlm_requests_total{outcome="ok"}'):
        assert name in text
    r = httpx.get(f"{server}/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"]
    assert "dlm" in httpx.get(f"{server}/").text


def test_a_client_that_disconnects_cancels_its_request(server):
    body = {"prompt": "x", "max_tokens": 200, "stream": True, "dlm": {"steps": 200, "block_length": 8, "canvas": True}}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=60) as resp:
        next(resp.iter_lines())  # the request runs ...
    deadline = time.monotonic() + 20  # ... and stops soon after the connection closed
    while httpx.get(f"{server}/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{server}/health").json()["running"] == 0
    assert 'dlm_requests_total{outcome="cancelled"}' in httpx.get(f"{server}/metrics").text


def test_serve_cli_refuses_bad_settings_in_one_line(tmp_path):
    port = free_port()
    for args, match in ((["--port", "70000"], "--port"), (["--max-batch", "0"], "max_batch"),
                        (["--replicas", "0"], "--replicas"), (["--model", str(tmp_path / "none")], "error")):
        p = subprocess.run([sys.executable, "-m", "dlm.cli", "serve", "--port", str(port), *args],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and match in p.stderr and "Traceback" not in p.stderr, p.stderr
