#!/usr/bin/env python
"""Derive Fast-dLLM parity fixtures (tests/fixtures/fast/) from the reference implementation.

Run with an environment that has torch, safetensors, numpy and transformers 4.x (the reference
modeling file cannot be imported with transformers 5.x)::

    /work/refenv/bin/python scripts/derive_fast_fixtures.py --reference-dir /tmp/fast_ref

``--reference-dir`` must hold the four reference files of NVlabs/Fast-dLLM ``v1/llada/``, extracted
by the user in the reference's own layout (``generate.py`` does
``from model.modeling_llada import LLaDAModelLM``)::

    generate.py
    model/__init__.py, model/modeling_llada.py, model/configuration_llada.py

for example (commit a9b81e4 of the Fast-dLLM repository)::

    REF=/tmp/fast_ref && mkdir -p $REF/model
    for f in generate.py model/__init__.py model/modeling_llada.py model/configuration_llada.py; do
        git -C <Fast-dLLM clone> show a9b81e4:v1/llada/$f > $REF/$f
    done

This script contains no reference code. It writes two tiny LLaDA-format checkpoints with
``tests/fixtures/llada/make_checkpoint.py``, loads them with the reference ``LLaDAModelLM`` (the
class ``generate.py`` itself imports; no missing or unexpected keys, weights equal to the generated
ones), and records what the reference ``generate`` / ``generate_with_prefix_cache`` /
``generate_with_dual_cache`` return (ids and nfe) over a grid of settings. While a case runs, the
module globals ``get_transfer_index`` / ``get_transfer_index_dynamic`` are wrapped by a probe that
calls the original, then rewinds the torch RNG, replays the same random draws to measure how close
each decision was, and checks that the RNG ends in the same state (so the probe is transparent);
every case is then run again without the probe and must give the same ids and nfe.

Outputs (tests/fixtures/fast/ or ``--out-dir``): plain/, medium/, sharp/ (checkpoints), cases.json,
manifest.json. See tests/fixtures/fast/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from derive_llada_fixtures import dump_cases, reference_and_out_dirs, sha256_file  # noqa: E402  (the LLaDA fixtures' JSON layout and hashes)

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "fast"
LLADA_FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "llada"
REFERENCE_FILES = ("generate.py", "model/__init__.py", "model/modeling_llada.py", "model/configuration_llada.py")
REFERENCE_COMMIT = "a9b81e4"  # NVlabs/Fast-dLLM (mirror Q-qiuqiu/Fast-dLLM), newest upstream when derived

MASK, EOS, PAD, VOCAB = 250, 251, 252, 256
HEAD_SCALES = {"plain": 1.0, "medium": 4.0, "sharp": 6.0}

# Same sizes (and seed) as tests/fixtures/llada TINY, one shard. Every checkpoint zeroes the mask
# row of the output head, so the model (practically) never proposes the mask id (committing it keeps
# the position masked and the reference's top-k loops would then index past their schedule).
# "medium" / "sharp" are the same weights with every other head row multiplied by 4 / 6 (logit std
# about 8 / 12), so that confidences often exceed 0.5 and 0.9 and the threshold / factor rules
# commit several tokens per step.
_TINY_SIZES = dict(vocab_size=VOCAB, embedding_size=VOCAB, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2,
                   mlp_hidden_size=128, mlp_ratio=2, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD)


def _spec(scale: float) -> dict:
    rows = {MASK: 0.0} if scale == 1.0 else {**{i: scale for i in range(VOCAB)}, MASK: 0.0}
    return dict(seed=0, shards=1, head_row_scale=rows, **_TINY_SIZES)


CHECKPOINTS = {name: _spec(scale) for name, scale in HEAD_SCALES.items()}

FUNCTIONS = {"none": "generate", "prefix": "generate_with_prefix_cache", "dual": "generate_with_dual_cache"}


def compact_head_row_scale(kwargs: dict) -> dict:
    """kwargs for the manifest; JSON turns the head_row_scale keys into strings (make_state_dict
    accepts those: it calls int() on each key)."""
    return {k: ({str(t): f for t, f in v.items()} if k == "head_row_scale" else v) for k, v in kwargs.items()}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, type=Path)
    ap.add_argument("--out-dir", type=Path, default=FIXTURE_DIR)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    return ap.parse_args()


class Probe:
    """Wraps the reference's get_transfer_index(_dynamic) and measures each decision.

    Recorded per case (all over the masked positions a call may commit):

    * ``min_argmax_gap``: smallest best-minus-second score at committed positions (logit units at
      T = 0; at T > 0 the log-ratio of the two largest Gumbel-perturbed scores exp(l) / g^T);
    * ``min_rank_rel_gap``: smallest relative gap (c_k - c_{k+1}) / |c_k| between the last selected
      and the first unselected confidence where a rank decides: the top-k rule, the forced
      "at least one" pick of the threshold rule when no confidence reaches the threshold, and the
      final ``torch.topk`` of the factor rule;
    * ``min_threshold_margin``: smallest |confidence - threshold| (probability units) over the
      comparisons the threshold rule (every masked position) or the factor rule (the sorted
      confidences it compares with 1 - factor / (n + 1) before stopping) makes;
    * ``ties``: exact ties in any of these decisions (cases with ties are dropped).
    """

    def __init__(self, torch, F, ref):
        self.torch, self.F, self.ref = torch, F, ref
        self.orig_gti = ref.get_transfer_index
        self.orig_dyn = ref.get_transfer_index_dynamic
        self.reset(None, None, None)

    def reset(self, cache, prompt_len, block_length):
        self.cache, self.prompt_len, self.block_length = cache, prompt_len, block_length
        self.gen_length = None
        self.full_calls = 0
        self.stats = dict(min_argmax_gap=math.inf, min_rank_rel_gap=math.inf, min_threshold_margin=math.inf,
                          ties=0)
        self.commits = []  # per call: committed positions per row
        self.earlier_block_fills = 0
        self.mask_id_committed = 0
        self.confidences = []  # masked-position confidences (low_confidence only), for the share stats
        self.factor_commit_all = 0  # factor rule stopped at the last sorted confidence yet committed all

    def install(self):
        self.ref.get_transfer_index = self.gti
        self.ref.get_transfer_index_dynamic = self.dyn

    def uninstall(self):
        self.ref.get_transfer_index = self.orig_gti
        self.ref.get_transfer_index_dynamic = self.orig_dyn

    # -- wrappers ------------------------------------------------------------------------------
    def gti(self, logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold=None):
        return self._run(False, logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold)

    def dyn(self, logits, temperature, remasking, mask_index, x, num_transfer_tokens, factor=1):
        return self._run(True, logits, temperature, remasking, mask_index, x, num_transfer_tokens, factor)

    def _run(self, dynamic, logits, temperature, remasking, mask_index, x, ntt, rule_arg):
        torch = self.torch
        orig = self.orig_dyn if dynamic else self.orig_gti
        pre = torch.get_rng_state()
        x0, ti = orig(logits, temperature, remasking, mask_index, x, ntt, rule_arg)
        post = torch.get_rng_state()
        # Replay the same draws (same calls, same order) to see the scores the reference used.
        torch.set_rng_state(pre)
        scores = self.ref.add_gumbel_noise(logits, temperature=temperature)
        x0_raw = torch.argmax(scores, dim=-1)
        if remasking == "low_confidence":
            conf = torch.gather(self.F.softmax(logits.to(torch.float64), dim=-1), -1, x0_raw.unsqueeze(-1)).squeeze(-1)
        else:
            conf = torch.rand(x0_raw.shape, dtype=torch.float32 if dynamic else torch.float64)
        if not torch.equal(torch.get_rng_state(), post):
            raise RuntimeError("probe replay consumed a different amount of randomness")
        torch.set_rng_state(post)
        if not torch.equal(torch.where(mask_index, x0_raw, x), x0):
            raise RuntimeError("probe replay proposed different tokens")
        self._measure(dynamic, scores, temperature, remasking, mask_index, ti, x0, conf, ntt, rule_arg)
        return x0, ti

    # -- measurement ---------------------------------------------------------------------------
    def _rank_gap(self, hi, lo):
        st = self.stats
        if hi == lo:
            st["ties"] += 1
        elif hi != -math.inf:
            st["min_rank_rel_gap"] = min(st["min_rank_rel_gap"], (hi - lo) / max(abs(hi), 1e-300))

    def _thr_gap(self, c, t):
        st = self.stats
        if c == t:
            st["ties"] += 1
        st["min_threshold_margin"] = min(st["min_threshold_margin"], abs(c - t))

    def _measure(self, dynamic, scores, temperature, remasking, mask_index, ti, x0, conf, ntt, rule_arg):
        st = self.stats
        B, L = mask_index.shape
        full = self.prompt_len is not None and L == self.prompt_len + self.gen_length
        if full:
            self.full_calls += 1
            if self.cache in ("prefix", "dual"):
                s = self.prompt_len + (self.full_calls - 1) * self.block_length
                self.earlier_block_fills += int(ti[:, :s].sum())
        self.commits.append([int(ti[b].sum()) for b in range(B)])
        self.mask_id_committed += int((x0[ti] == MASK).sum())
        # argmax gaps at committed positions
        top2 = scores.topk(2, dim=-1).values.double()
        if temperature > 0:
            gaps = top2[..., 0].log() - top2[..., 1].log()
        else:
            gaps = top2[..., 0] - top2[..., 1]
        if ti.any():
            g = gaps[ti]
            st["ties"] += int((g == 0).sum())
            st["min_argmax_gap"] = min(st["min_argmax_gap"], float(g.min()))
        if remasking == "low_confidence":
            self.confidences += conf[mask_index].double().tolist()
        for b in range(B):
            c = conf[b][mask_index[b]].double().sort(descending=True).values.tolist()
            n = len(c)
            if n == 0:
                continue
            k = int(ti[b].sum())
            if not dynamic and rule_arg is not None:  # threshold rule
                thr = float(rule_arg)
                for v in c:
                    self._thr_gap(v, thr)
                if c[0] < thr and n > 1:  # the forced pick is an argmax over confidences
                    self._rank_gap(c[0], c[1])
                if k != max(1, sum(v >= thr for v in c)):
                    raise RuntimeError("threshold rule committed an unexpected number of tokens")
            elif not dynamic:  # top-k rule
                kk = int(ntt.reshape(-1)[b]) if ntt.dim() else int(ntt)
                if min(kk, n) != k:
                    raise RuntimeError(f"top-k committed {k}, schedule said {kk}")
                if 0 < k < n:
                    self._rank_gap(c[k - 1], c[k])
            else:  # factor rule: compares c[i] with 1 - factor / (i + 2) for i >= 1 until one is below
                factor = float(rule_arg)
                stop = None
                for i in range(1, n):
                    t = 1 - factor / (i + 2)
                    self._thr_gap(c[i], t)
                    if c[i] < t:
                        stop = i
                        break
                # the reference adds one when it stops at the last index (or never stops)
                expected = n if stop is None or stop == n - 1 else stop
                if stop is not None and stop == n - 1:
                    self.factor_commit_all += 1
                if k != expected:
                    raise RuntimeError(f"factor rule committed {k}, expected {expected}")
                if 0 < k < n:
                    self._rank_gap(c[k - 1], c[k])


def main():
    args = parse_args()
    ref_dir, out_dir = reference_and_out_dirs(args, REFERENCE_FILES)
    work = Path(tempfile.mkdtemp(prefix="fast_fixtures_"))

    sys.dont_write_bytecode = True  # no __pycache__ in the fixture or reference dirs
    import torch
    import torch.nn.functional as F
    import transformers
    import numpy
    import safetensors

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(LLADA_FIXTURE_DIR))
    import make_checkpoint as mc  # noqa: E402

    sys.path.insert(0, str(ref_dir))
    ref = importlib.import_module("generate")
    from model.modeling_llada import LLaDAModelLM  # noqa: E402  (the class generate.py imports)

    # ------------------------------------------------------------------ checkpoints
    def expected_state(spec):
        over = {k: v for k, v in spec.items() if k not in ("seed", "shards", "head_row_scale")}
        return mc.make_state_dict(mc.build_config(**over), spec["seed"], spec.get("head_row_scale"))

    models = {}
    for name, spec in CHECKPOINTS.items():
        d = out_dir / name
        if d.exists():
            shutil.rmtree(d)
        mc.make_llada_checkpoint(d, **spec)
        again = work / f"{name}_again"
        mc.make_llada_checkpoint(again, **spec)
        files = sorted(p.name for p in d.iterdir())
        assert files == sorted(p.name for p in again.iterdir()), name
        for fn in files:
            assert (d / fn).read_bytes() == (again / fn).read_bytes(), f"{name}/{fn} not reproducible"
        # the JSON form of the kwargs (string keys) must build the same weights
        again2 = work / f"{name}_json"
        mc.make_llada_checkpoint(again2, **json.loads(json.dumps(compact_head_row_scale(spec))))
        assert (d / "model.safetensors").read_bytes() == (again2 / "model.safetensors").read_bytes(), name
        model, info = LLaDAModelLM.from_pretrained(str(d), torch_dtype=torch.float32, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        if bad:
            raise RuntimeError(f"reference load of {name} reported {bad}")
        model = model.eval()
        expected = expected_state(spec)
        got = model.state_dict()
        assert set(got) == set(expected), (name, set(got) ^ set(expected))
        for k, v in expected.items():
            assert torch.equal(got[k], v), (name, k)
        models[name] = model

    # Confidence shares at the first step: random prompts of 8 ids followed by 32 masks.
    share = {}
    with torch.no_grad():
        xs = torch.randint(0, MASK, (16, 40), generator=torch.Generator().manual_seed(99))
        xs[:, 8:] = MASK
        for name, model in models.items():
            p = torch.softmax(model(xs).logits.double(), -1)[:, 8:]
            top = p.max(-1).values
            share[name] = {"first_step_positions": int(top.numel()),
                           "first_step_share_above_0.5": round(float((top > 0.5).double().mean()), 4),
                           "first_step_share_above_0.9": round(float((top > 0.9).double().mean()), 4),
                           "first_step_median_top_prob": round(float(top.median()), 4),
                           "first_step_max_mask_prob": float(p[..., MASK].max())}

    # ------------------------------------------------------------------ cases
    def prompts(seed, b, l):
        return torch.randint(0, MASK, (b, l), generator=torch.Generator().manual_seed(seed))

    P = {"p8": prompts(100, 1, 8), "p6x2": prompts(101, 2, 6), "p5": prompts(102, 1, 5), "p10": prompts(103, 1, 10)}
    base = dict(temperature=0.0, remasking="low_confidence", threshold=None, factor=None)

    def g(gen, blk, steps, **kw):
        return dict(gen_length=gen, block_length=blk, steps=steps, **kw)

    # (tag, checkpoint, prompt, settings, seed); every spec runs with each of the three caches.
    specs = [
        # top-k schedule (threshold None, factor None)
        ("topk_t0_gen16_blk16_steps16", "plain", "p8", g(16, 16, 16), 0),
        ("topk_t0_gen16_blk8_steps8", "plain", "p8", g(16, 8, 8), 0),
        ("topk_t0_gen24_blk8_steps12_batch2", "plain", "p6x2", g(24, 8, 12), 0),
        ("topk_t0_gen32_blk8_steps32", "plain", "p10", g(32, 8, 32), 0),
        ("topk_t0_gen16_blk8_steps6_remainder", "plain", "p5", g(16, 8, 6), 0),
        ("topk_t0_gen16_blk4_steps4_one_step_per_block", "plain", "p8", g(16, 4, 4), 0),
        ("topk_t0_random_gen16_blk8_steps8_batch2", "plain", "p6x2", g(16, 8, 8, remasking="random"), 7),
        ("topk_t1_gen16_blk8_steps8_batch2", "plain", "p6x2", g(16, 8, 8, temperature=1.0), 1),
        ("topk_t1_random_gen24_blk8_steps12", "plain", "p8", g(24, 8, 12, temperature=1.0, remasking="random"), 2),
        ("topk_t1_gen16_blk16_steps8", "plain", "p10", g(16, 16, 8, temperature=1.0), 3),
        ("topk_t0_gen16_blk8_steps8_sharp", "sharp", "p8", g(16, 8, 8), 0),
        # threshold rule
        ("thr0.9_t0_gen32_blk8_steps32_sharp", "sharp", "p8", g(32, 8, 32, threshold=0.9), 0),
        ("thr0.9_t0_gen16_blk16_steps16_batch2_sharp", "sharp", "p6x2", g(16, 16, 16, threshold=0.9), 0),
        ("thr0.9_t1_gen24_blk8_steps12_batch2_sharp", "sharp", "p6x2",
         g(24, 8, 12, threshold=0.9, temperature=1.0), 4),
        ("thr0.9_t0_random_gen16_blk8_steps16_sharp", "sharp", "p10",
         g(16, 8, 16, threshold=0.9, remasking="random"), 5),
        ("thr0.9_t1_random_gen16_blk8_steps8_sharp", "sharp", "p5",
         g(16, 8, 8, threshold=0.9, temperature=1.0, remasking="random"), 12),
        ("thr0.9_t0_gen32_blk8_steps8_few_steps_sharp", "sharp", "p8", g(32, 8, 8, threshold=0.9), 0),
        ("thr0.9_t0_gen16_blk8_steps8_medium", "medium", "p5", g(16, 8, 8, threshold=0.9), 0),
        ("thr0.9_t0_gen16_blk8_steps8_plain", "plain", "p5", g(16, 8, 8, threshold=0.9), 0),
        ("thr0.5_t0_gen32_blk8_steps32_medium", "medium", "p10", g(32, 8, 32, threshold=0.5), 0),
        ("thr0.5_t1_gen16_blk8_steps8_batch2_medium", "medium", "p6x2", g(16, 8, 8, threshold=0.5, temperature=1.0), 6),
        ("thr0.5_t0_gen24_blk8_steps6_few_steps_batch2_medium", "medium", "p6x2", g(24, 8, 6, threshold=0.5), 0),
        ("thr0.5_t0_gen16_blk16_steps16_sharp", "sharp", "p8", g(16, 16, 16, threshold=0.5), 0),
        # factor rule
        ("factor1.0_t0_gen32_blk8_steps32_sharp", "sharp", "p8", g(32, 8, 32, factor=1.0), 0),
        ("factor1.0_t0_gen16_blk16_steps16_batch2_sharp", "sharp", "p6x2", g(16, 16, 16, factor=1.0), 0),
        ("factor1.0_t1_gen24_blk8_steps12_sharp", "sharp", "p10", g(24, 8, 12, factor=1.0, temperature=1.0), 8),
        ("factor1.0_t1_random_gen16_blk8_steps8_sharp", "sharp", "p8",
         g(16, 8, 8, factor=1.0, temperature=1.0, remasking="random"), 11),
        ("factor1.0_t0_gen32_blk8_steps4_few_steps_sharp", "sharp", "p5", g(32, 8, 4, factor=1.0), 0),
        ("factor2.0_t0_gen32_blk8_steps32_medium", "medium", "p10", g(32, 8, 32, factor=2.0), 0),
        ("factor2.0_t1_gen16_blk8_steps8_batch2_medium", "medium", "p6x2", g(16, 8, 8, factor=2.0, temperature=1.0), 9),
        ("factor2.0_t0_random_gen16_blk8_steps16_medium", "medium", "p8",
         g(16, 8, 16, factor=2.0, remasking="random"), 10),
        ("factor2.0_t0_gen32_blk8_steps32_sharp", "sharp", "p10", g(32, 8, 32, factor=2.0), 0),
    ]

    probe = Probe(torch, F, ref)
    cases, dropped, conf_seen = [], [], {}
    for tag, ck, pname, settings, seed in specs:
        for cache, fname in FUNCTIONS.items():
            kw = dict(base)
            kw.update(settings)
            kw["mask_id"] = MASK
            prompt = P[pname]
            fn = getattr(ref, fname)
            probe.reset(cache, prompt.shape[1], kw["block_length"])
            probe.gen_length = kw["gen_length"]
            probe.install()
            try:
                torch.manual_seed(seed)
                out, nfe = fn(models[ck], prompt.clone(), **kw)
            finally:
                probe.uninstall()
            torch.manual_seed(seed)
            out2, nfe2 = fn(models[ck], prompt.clone(), **kw)
            if not (torch.equal(out, out2) and nfe == nfe2):
                raise RuntimeError(f"{tag}/{cache}: the probe changed the result or the run is not deterministic")
            if nfe != len(probe.commits):
                raise RuntimeError(f"{tag}/{cache}: nfe {nfe} but {len(probe.commits)} forward passes")
            if probe.mask_id_committed:
                raise RuntimeError(f"{tag}/{cache}: the model committed the mask id; change the seed")
            name = f"{cache}_{tag}"
            gen = out[:, prompt.shape[1]:]
            margins = {k: (None if v == math.inf else v) for k, v in probe.stats.items()}
            case = {
                "name": name,
                "checkpoint": ck,
                "cache": cache,
                "function": fname,
                "seed": seed,
                "prompt": prompt.tolist(),
                **{k: kw[k] for k in ("steps", "gen_length", "block_length", "temperature", "remasking",
                                      "mask_id", "threshold", "factor")},
                "output": out.tolist(),
                "nfe": int(nfe),
                "masks_left": int((gen == MASK).sum()),
                "margins": margins,
                "stats": {"earlier_block_fills": probe.earlier_block_fills,
                          "factor_commit_all_quirk": probe.factor_commit_all,
                          "commits_per_pass": probe.commits},
            }
            if margins["ties"]:
                dropped.append(name)
                print(f"DROPPED (ties) {name}")
                continue
            conf_seen.setdefault(ck, []).extend(probe.confidences)
            cases.append(case)
            cp = [sum(r) for r in probe.commits]
            print(f"{name:66s} nfe {nfe:3d} left {case['masks_left']:2d} fills {probe.earlier_block_fills} "
                  f"quirk {probe.factor_commit_all} commits max {max(cp)} mean {sum(cp) / len(cp):.2f} "
                  f"gap {margins['min_argmax_gap'] or 0:.3g} rank {margins['min_rank_rel_gap'] or 0:.3g} "
                  f"thr {margins['min_threshold_margin'] or 0:.3g}")
    (out_dir / "cases.json").write_text(dump_cases(cases))

    for name, vals in conf_seen.items():
        if vals:
            c = torch.tensor(vals, dtype=torch.float64)
            share[name].update({"in_cases_low_confidence_evaluations": int(c.numel()),
                                "in_cases_share_above_0.5": round(float((c > 0.5).double().mean()), 4),
                                "in_cases_share_above_0.9": round(float((c > 0.9).double().mean()), 4)})

    # cross-cache agreement (informative)
    by_tag = {}
    for case in cases:
        by_tag.setdefault(case["name"].split("_", 1)[1], {})[case["cache"]] = case["output"]
    agree = {tag: len({json.dumps(v) for v in outs.values()}) for tag, outs in by_tag.items()}

    # ------------------------------------------------------------------ manifest
    manifest = {
        "reference": {"repository": "NVlabs/Fast-dLLM (mirror Q-qiuqiu/Fast-dLLM)", "commit": REFERENCE_COMMIT,
                      "path": "v1/llada/",
                      "files_sha256": {f: sha256_file(ref_dir / f) for f in REFERENCE_FILES}},
        "checkpoints": {
            name: {"path": name,
                   "make_llada_checkpoint_kwargs": {**spec, "head_row_scale": f"@@HRS_{name}@@"},
                   "state_sha256": mc.state_dict_sha256(expected_state(spec)),
                   "model.safetensors_sha256": sha256_file(out_dir / name / "model.safetensors"),
                   "confidence": share[name]}
            for name, spec in CHECKPOINTS.items()
        },
        "cases": {"count": len(cases), "dropped_for_ties": dropped,
                  "with_masks_left": [c["name"] for c in cases if c["masks_left"]],
                  "with_earlier_block_fills": [c["name"] for c in cases if c["stats"]["earlier_block_fills"]],
                  "with_factor_commit_all_quirk": [c["name"] for c in cases if c["stats"]["factor_commit_all_quirk"]],
                  "distinct_outputs_across_caches": agree},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                     "numpy": numpy.__version__},
        "torch_num_threads": args.threads,
        "command": "/work/refenv/bin/python scripts/derive_fast_fixtures.py --reference-dir /tmp/fast_ref",
    }
    text = json.dumps(manifest, indent=1)
    for name, spec in CHECKPOINTS.items():  # keep the 256-entry head_row_scale dicts on one line each
        text = text.replace(f'"@@HRS_{name}@@"', json.dumps(compact_head_row_scale(spec)["head_row_scale"]))
    for name, spec in CHECKPOINTS.items():
        assert json.loads(text)["checkpoints"][name]["make_llada_checkpoint_kwargs"] == compact_head_row_scale(spec)
    (out_dir / "manifest.json").write_text(text + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(share, indent=1))
    print(f"{len(cases)} cases, dropped {dropped}, masks left in "
          f"{sum(1 for c in cases if c['masks_left'])}; wrote {out_dir}")


if __name__ == "__main__":
    main()
