"""Serving benchmark: throughput and latency of ``dlm serve`` under concurrent clients, per batching
policy, side by side in one run.

    .venv/bin/python benchmarks/serve.py [--setups isd:smol-idlm,fast:smol-a2d-instruct]
        [--policies stationary,continuous,serial] [--concurrency 1,8,32] [--min-requests 8]
        [--max-tokens 64] [--threads 2] [--out benchmarks/results/serve/serve.json]

For each setup (sampler:model) the model loads once; for each policy a real server (FastAPI +
uvicorn on loopback, :func:`dlm.server.create_app`) runs it, and for each concurrency C, C client
threads (httpx) send the requests (closed loop: a client sends its next
request when its last answer arrived). Prompts: a seeded selection of the ``debian`` eval task's
test pairs (chat prompts, as ``dlm eval --task debian`` builds them), sent as token ids; T = 0,
``max_tokens`` new tokens; max(``--min-requests``, C) requests at concurrency C. ``serial`` is the
one-request-at-a-time baseline (the engine with a batch of one); every run must return the same
text for the same prompt as the first run that sent it (``text_mismatches`` counts those that do not).

Columns: tokens/s (answer tokens of all requests / wall seconds from the first request to the
last answer), p50 / p95 request latency (seconds from sending to the last byte), the speed-up over
``serial`` at the same concurrency, and the mean rows per batched forward (from /metrics). One
warm-up request per server is excluded. Writes JSON (settings, seed, versions, hardware, every
request's latency) and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SAMPLER_OPTIONS = {  # per sampler: the options every request of the setup carries
    "isd": {"stride": 4},
    "fast": {"threshold": 0.9, "block_length": 32},
    "llada": {"block_length": 32},
}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setups", default="isd:smol-idlm,fast:smol-a2d-instruct",
                    help="comma-separated sampler:model pairs")
    ap.add_argument("--policies", default="stationary,continuous,serial")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--min-requests", type=int, default=8,
                    help="requests per (setup, policy, concurrency): max(this, concurrency)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--sample-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/serve/serve.json"))
    args = ap.parse_args(argv)
    try:
        args.setups = [tuple(s.split(":", 1)) for s in args.setups.split(",")]
        args.policies = args.policies.split(",")
        args.concurrency = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        ap.error("--setups is sampler:model,...; --concurrency is integers")
    if any(len(s) != 2 for s in args.setups) or any(c < 1 for c in args.concurrency) or args.min_requests < 1:
        ap.error("bad --setups / --concurrency / --min-requests")
    return args


def prompts_for(model, n: int, seed: int) -> list[list[int]]:
    from dlm.eval.runner import select_examples
    from dlm.eval.tasks import get_task

    task = get_task("debian", None)
    selected, _, encoded = select_examples(task, model, task.load_for(model), n, seed)
    return [encoded[ex.id] for ex in selected]


def run_clients(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[dict]]:
    import httpx

    results: list[dict | None] = [None] * len(bodies)
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()

    def client():
        with httpx.Client(timeout=3600) as http:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = http.post(f"{url}/v1/completions", json=bodies[i])
                latency = time.perf_counter() - t0
                body = r.json()
                ok = r.status_code == 200
                results[i] = {"latency": latency, "status": r.status_code,
                              "text": body["choices"][0]["text"] if ok else None,
                              "tokens": body["usage"]["completion_tokens"] if ok else 0,
                              "nfe": body["dlm"]["nfe"] if ok else None, "error": None if ok else body}

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, results


def batch_rows(url: str) -> tuple[float, float]:
    import httpx

    text = httpx.get(f"{url}/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("dlm_batch_size_sum") or line.startswith("dlm_batch_size_count")}
    return values.get("dlm_batch_size_sum", 0.0), values.get("dlm_batch_size_count", 0.0)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    import dlm
    from dlm.engine import EngineConfig
    from dlm.provenance import software_versions
    from serving import running_server

    torch.set_num_threads(args.threads)
    rows, texts = [], {}
    for sampler, name in args.setups:
        model = dlm.load(name)
        prompts = prompts_for(model, max([args.min_requests, *args.concurrency]), args.sample_seed)
        options = {**SAMPLER_OPTIONS.get(sampler, {}), "sampler": sampler}
        bodies = [{"prompt": p, "max_tokens": args.max_tokens, "temperature": 0.0 if sampler != "dsl" else None,
                   "dlm": options} for p in prompts]
        bodies = [{k: v for k, v in b.items() if v is not None} for b in bodies]
        for policy in args.policies:
            config = EngineConfig(policy=policy, max_batch=max(args.concurrency), token_budget=1 << 20)
            with running_server(model, name, config) as url:
                run_clients(url, bodies[:1], 1)  # warm-up
                for conc in args.concurrency:
                    s0, c0 = batch_rows(url)
                    wall, res = run_clients(url, bodies[:max(args.min_requests, conc)], conc)
                    s1, c1 = batch_rows(url)
                    bad = [r for r in res if r["status"] != 200]
                    key = (sampler, name)
                    got = [r["text"] for r in res]
                    seen = texts.setdefault(key, {})  # prompt index -> the first text returned for it
                    mismatch = sum(seen.setdefault(i, t) != t for i, t in enumerate(got))
                    lat = sorted(r["latency"] for r in res)
                    tokens = sum(r["tokens"] for r in res)
                    row = {"sampler": sampler, "model": name, "policy": policy, "concurrency": conc,
                           "requests": len(res), "failed": len(bad), "tokens": tokens, "wall_s": round(wall, 3),
                           "tokens_per_s": round(tokens / wall, 3),
                           "p50_s": round(statistics.median(lat), 3),
                           "p95_s": round(lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))], 3),
                           "mean_batch_rows": round((s1 - s0) / (c1 - c0), 2) if c1 > c0 else None,
                           "text_mismatches": mismatch,
                           "latencies_s": [round(r["latency"], 3) for r in res]}
                    rows.append(row)
                    print(f"{sampler:>5} {name:<18} {policy:<10} C={conc:<3} {row['tokens_per_s']:>8.1f} tok/s "
                          f"p50 {row['p50_s']:.2f}s p95 {row['p95_s']:.2f}s rows/fwd {row['mean_batch_rows']} "
                          f"failed {len(bad)} mismatches {mismatch}", flush=True)
        del model
    for row in rows:
        base = next((r for r in rows if r["sampler"] == row["sampler"] and r["model"] == row["model"]
                     and r["policy"] == "serial" and r["concurrency"] == row["concurrency"]), None)
        row["speedup_vs_serial"] = round(row["tokens_per_s"] / base["tokens_per_s"], 2) if base else None
    import platform

    result = {"benchmark": "serve", "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "seed": args.sample_seed, "versions": software_versions(),
              "hardware": {"machine": platform.machine(), "processor": platform.processor(),
                           "cpus": __import__("os").cpu_count(), "torch_threads": args.threads,
                           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "command": "benchmarks/serve.py " + " ".join(sys.argv[1:] if argv is None else argv), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    lines = ["| sampler | model | policy | concurrency | requests | answer tokens / request | tokens/s | x serial | "
             "p50 s | p95 s | rows / forward | failed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['sampler']} | {r['model']} | {r['policy']} | {r['concurrency']} | {r['requests']} | "
                     f"{r['tokens'] / r['requests']:.1f} | {r['tokens_per_s']:.2f} | "
                     f"{r['speedup_vs_serial'] if r['speedup_vs_serial'] is not None else '-'} | {r['p50_s']:.2f} | "
                     f"{r['p95_s']:.2f} | {r['mean_batch_rows']} | {r['failed']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
