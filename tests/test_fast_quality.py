"""Quality bound of the cached / parallel ``fast`` variants on a shipped model.

``dlm eval --task debian`` on the first 32 test pairs of the seeded selection with the shipped
tiny-a2d-instruct (gen_length 32, blocks of 8): a cached variant may not lose more than
``BOUND`` ROUGE-1 points against the same commit rule without a cache, and the no-cache threshold
run may not lose more than ``BOUND`` against ``llada`` at one token per pass. Measured when the test
was written (48 pairs): llada 13.98, fast none t0.9 13.98, prefix t0.9 13.19, dual t0.9 13.41, dual
top-k 13.41. The 135M numbers are in docs/fast-decoding.md.
"""

from __future__ import annotations

import json

import pytest

from dlm.cli import main

BOUND = 1.5  # ROUGE-1 points
RUNS = {
    "llada": ["--sampler", "llada", "--nfe", "32"],
    "none-t0.9": ["--sampler", "fast", "-o", "threshold=0.9"],
    "prefix-t0.9": ["--sampler", "fast", "-o", "threshold=0.9", "-o", "cache=prefix"],
    "dual-t0.9": ["--sampler", "fast", "-o", "threshold=0.9", "-o", "cache=dual"],
    "dual-topk": ["--sampler", "fast", "-o", "cache=dual", "--nfe", "32"],
}


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    out = tmp_path_factory.mktemp("fastq")
    result = {}
    for name, args in RUNS.items():
        code = main(["eval", "--task", "debian", "--model", "tiny-a2d-instruct", "--limit", "32", "--out", str(out),
                     "--name", name, "--no-progress", "-o", "gen_length=32", "-o", "block_length=8", *args])
        assert code == 0
        summary = json.loads((out / f"{name}.summary.json").read_text())
        result[name] = summary["results"][0]
    return result


def test_cached_variants_stay_within_the_bound(scores):
    assert scores["none-t0.9"]["rouge1"] >= scores["llada"]["rouge1"] - BOUND
    for cached in ("prefix-t0.9", "dual-t0.9"):
        assert scores[cached]["rouge1"] >= scores["none-t0.9"]["rouge1"] - BOUND, cached
    assert scores["dual-topk"]["rouge1"] >= scores["llada"]["rouge1"] - BOUND


def test_parallel_variants_need_fewer_passes(scores):
    assert scores["llada"]["mean_nfe"] == 32
    for name in ("none-t0.9", "prefix-t0.9", "dual-t0.9"):
        assert scores[name]["mean_nfe"] < 32, name
