#!/usr/bin/env python
"""Derive token-exact parity fixtures for Dream's sampler (``diffusion_generate`` / ``_sample``).

Run with the environment that holds Dream's dependencies (transformers 4.46.x; 5.x cannot import
Dream's remote code), on CPU, one thread::

    OMP_NUM_THREADS=1 /work/refenv/bin/python scripts/derive_dream_sampler_fixtures.py --reference-dir /tmp/dream_ref/ref

``--reference-dir`` holds Dream's three remote-code files (``modeling_dream.py``,
``configuration_dream.py``, ``generation_utils.py``), as for ``scripts/derive_dream_fixtures.py``.
This script contains no Dream code. It loads the committed checkpoints ``tests/fixtures/dream/tiny``
and ``tiny_tied`` (written by ``derive_dream_fixtures.py``; this script never rewrites them) with
Dream's own ``DreamModel`` (the three files copied next to a scratch copy,
``AutoModel.from_pretrained(..., trust_remote_code=True)``) and, for every case,
``torch.manual_seed(seed)`` immediately followed by::

    model.diffusion_generate(input_ids, generation_config=model.generation_config, attention_mask=...,
                             mask_token_id=90, max_new_tokens=G, steps=S, alg=..., alg_temp=...,
                             temperature=..., top_p=..., top_k=..., eps=1e-3, output_history=True,
                             return_dict_in_generate=True, return_dict=True,
                             generation_logits_hook_func=<identity hook that records the logits>)

(``return_dict`` is the vendored copy's name for the Hugging Face release's
``return_dict_in_generate``; passing both works with either copy.)

Every run is then replayed by an independent re-derivation of the sampling rule (``replay`` below,
written from the README's semantics list, fed the logits Dream computed) that must reproduce Dream's
history step for step and token for token; it also measures the decision margins recorded in
``stats``. Cases whose decisions fall on an exact tie are re-drawn with another seed.

Besides the two committed checkpoints, cases run on ``tiny_tied_mask0``: tiny_tied with row 90 of the
tied ``model.embed_tokens.weight`` set to 0 (tiny_tied predicts its own mask id; tiny/'s untied
lm_head already has a zero mask row). It is not committed: it is built in a scratch directory
(tiny_tied's ``config.json`` + the edited tensors in one ``model.safetensors``), and tests rebuild it
the same way; ``sampler_manifest.json`` records ``state_sha256`` of each checkpoint's tensors.

Outputs (tests/fixtures/dream/): ``sampler_cases.json`` and ``sampler_manifest.json``. The README
there documents the format and the semantics a reimplementation must copy. Rerunning reproduces
both files byte for byte; with 2 threads every token and seed is the same and a few margins (stats,
rounded to 3 significant digits) move in their last digit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from derive_dream_fixtures import EOS, MASK, REFERENCE_FILES, load_reference  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "dream"
PAD = EOS  # Dream's pad id is its EOS id (tiny: 91)
EPS = 1e-3
CHECKPOINTS = {"tiny": False, "tiny_tied": True}  # committed checkpoints: name -> tie_word_embeddings
# not committed; tests rebuild it: tiny_tied's config.json and tensors with row MASK of the (tied)
# embedding set to 0, so the mask id's logit is exactly 0 (as in tiny/, whose lm_head mask row is 0)
MASK0_VARIANT = ("tiny_tied_mask0", "tiny_tied", "model.embed_tokens.weight")
MAX_RESEEDS = 20


# ----------------------------------------------------------------------------------------------- prompts
def make_prompts() -> dict[str, tuple[list[list[int]], list[list[int]] | None]]:
    """Named (input_ids, attention_mask) pairs; ids in [0, 88): no mask (90) or pad/EOS (91) id."""
    g = torch.Generator().manual_seed(2024)
    r = lambda n: torch.randint(0, 88, (n,), generator=g).tolist()  # noqa: E731
    b1 = [r(7)]
    b2 = [r(7), r(7)]
    rows = [r(7), r(4), r(2)]  # left-padded to 7 with PAD; mask 0 on the pads
    padded = [[PAD] * (7 - len(x)) + x for x in rows]
    pmask = [[0] * (7 - len(x)) + [1] * len(x) for x in rows]
    rows2 = [r(5), r(8)]
    padded2 = [[PAD] * (8 - len(x)) + x for x in rows2]
    pmask2 = [[0] * (8 - len(x)) + [1] * len(x) for x in rows2]
    return {
        "b1": (b1, None),
        "b2": (b2, [[1] * 7, [1] * 7]),  # an all-ones mask: Dream takes its unpadded ("full") path
        "b2_nomask": (b2, None),
        "pad3": (padded, pmask),
        "pad2": (padded2, pmask2),
    }


# ----------------------------------------------------------------------------------------------- grid
def case_grid() -> list[dict]:
    cases = []

    def add(name, ckpt="tiny", prompt="b1", G=8, steps=4, alg="entropy", alg_temp=None, temperature=0.0,
            top_p=None, top_k=None, seed=0):
        cases.append(dict(name=name, checkpoint=ckpt, prompt=prompt, max_new_tokens=G, steps=steps, alg=alg,
                          alg_temp=alg_temp, temperature=temperature, top_p=top_p, top_k=top_k, eps=EPS,
                          seed=seed))

    algs = ("origin", "maskgit_plus", "topk_margin", "entropy")
    conf_algs = algs[1:]
    seed = 0
    # batch 1, G=8: steps G, G/2, G/4 at T=0; T=0.8 plain / top_p / top_k; alg_temp 0.5 (T=0 and T=0.8)
    for alg in algs:
        for steps in (8, 4, 2):
            seed += 1
            add(f"b1_{alg}_t0_s{steps}", alg=alg, steps=steps, seed=seed)
        for tag, kw in (("t0.8", {}), ("t0.8_p0.9", {"top_p": 0.9}), ("t0.8_k20", {"top_k": 20}),
                        ("t0.8_p0.9_k20", {"top_p": 0.9, "top_k": 20})):
            seed += 1
            add(f"b1_{alg}_{tag}_s4", alg=alg, temperature=0.8, seed=seed, **kw)
        seed += 1
        add(f"b1_{alg}_t0.8_s8", alg=alg, temperature=0.8, steps=8, seed=seed)
    for alg in conf_algs:
        seed += 1
        add(f"b1_{alg}_t0_algtemp0_s4", alg=alg, alg_temp=0.0, seed=seed)
        for T in (0.0, 0.8):
            seed += 1
            add(f"b1_{alg}_t{T:g}_algtemp0.5_s4", alg=alg, temperature=T, alg_temp=0.5, seed=seed)
        seed += 1
        add(f"b1_{alg}_t0.8_algtemp0.5_s2", alg=alg, temperature=0.8, alg_temp=0.5, steps=2, seed=seed)
        # at T=0, top_p / top_k still renormalise the probabilities, so they move the confidences
        seed += 1
        add(f"b1_{alg}_t0_p0.9_s4", alg=alg, top_p=0.9, seed=seed)
        seed += 1
        add(f"b1_{alg}_t0_k20_s4", alg=alg, top_k=20, seed=seed)
    # G=12: steps 12 / 6 / 3 and a non-divisor (5)
    for alg in ("origin", "maskgit_plus", "entropy"):
        for steps in (12, 6, 3, 5):
            seed += 1
            add(f"b1_g12_{alg}_t0_s{steps}", alg=alg, G=12, steps=steps, seed=seed)
    for alg in ("origin", "topk_margin"):
        seed += 1
        add(f"b1_g12_{alg}_t0.8_s6", alg=alg, G=12, steps=6, temperature=0.8, seed=seed)
    seed += 1
    add("b1_g12_entropy_t0.8_algtemp0.5_s12", alg="entropy", G=12, steps=12, temperature=0.8, alg_temp=0.5,
        seed=seed)
    # batch 2, unpadded
    for alg in algs:
        seed += 1
        add(f"b2_{alg}_t0_s4", prompt="b2", alg=alg, seed=seed)
        seed += 1
        add(f"b2_{alg}_t0.8_s4", prompt="b2", alg=alg, temperature=0.8, seed=seed)
    seed += 1
    add("b2_entropy_t0_s8", prompt="b2", alg="entropy", steps=8, seed=seed)
    for alg in conf_algs:
        seed += 1
        add(f"b2_{alg}_t0.8_algtemp0.5_s4", prompt="b2", alg=alg, temperature=0.8, alg_temp=0.5, seed=seed)
    seed += 1
    add("b2_nomask_maskgit_plus_t0.8_p0.9_s4", prompt="b2_nomask", alg="maskgit_plus", temperature=0.8,
        top_p=0.9, seed=seed)
    seed += 1
    add("b2_origin_t0.8_k20_s8", prompt="b2", alg="origin", temperature=0.8, top_k=20, steps=8, seed=seed)
    # left-padded batches (Dream's padding path)
    for alg in algs:
        for steps in (8, 4):
            seed += 1
            add(f"pad3_{alg}_t0_s{steps}", prompt="pad3", alg=alg, steps=steps, seed=seed)
        seed += 1
        add(f"pad3_{alg}_t0.8_s4", prompt="pad3", alg=alg, temperature=0.8, seed=seed)
    for alg in conf_algs:
        seed += 1
        add(f"pad3_{alg}_t0.8_algtemp0.5_s4", prompt="pad3", alg=alg, temperature=0.8, alg_temp=0.5,
            seed=seed)
        seed += 1
        add(f"pad3_{alg}_t0_algtemp0.5_s2", prompt="pad3", alg=alg, alg_temp=0.5, steps=2, seed=seed)
    seed += 1
    add("pad3_entropy_t0.8_p0.9_k20_s4", prompt="pad3", alg="entropy", temperature=0.8, top_p=0.9, top_k=20,
        seed=seed)
    seed += 1
    add("pad3_g12_maskgit_plus_t0_s6", prompt="pad3", alg="maskgit_plus", G=12, steps=6, seed=seed)
    for alg in ("origin", "entropy"):
        seed += 1
        add(f"pad2_{alg}_t0.8_s4", prompt="pad2", alg=alg, temperature=0.8, seed=seed)
    # tied head (tiny_tied predicts its own mask id: its lm_head mask row is the mask embedding), and the
    # same cases on tiny_tied_mask0, tiny_tied with that row zeroed (rebuilt, see MASK0_VARIANT)
    for ckpt, tag in (("tiny_tied", "tied"), ("tiny_tied_mask0", "tied_mask0")):
        for prompt, alg, T, alg_temp, steps, top_p in (
                ("b1", "entropy", 0.0, None, 4, None), ("b1", "maskgit_plus", 0.0, None, 8, None),
                ("b1", "origin", 0.8, None, 4, None), ("b2", "topk_margin", 0.0, None, 8, None),
                ("b2", "entropy", 0.8, 0.5, 4, None), ("pad3", "maskgit_plus", 0.0, None, 4, None),
                ("pad3", "entropy", 0.8, 0.5, 4, None), ("pad3", "origin", 0.8, None, 4, 0.9)):
            seed += 1
            name = f"{tag}_{prompt}_{alg}_t{T:g}" + (f"_algtemp{alg_temp:g}" if alg_temp else "") + (
                f"_p{top_p:g}" if top_p else "") + f"_s{steps}"
            add(name, ckpt=ckpt, prompt=prompt, alg=alg, temperature=T, alg_temp=alg_temp, steps=steps,
                top_p=top_p, seed=seed)
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


# ----------------------------------------------------------------------------------------------- Dream
def run_dream(model, case, ids: torch.Tensor, am: torch.Tensor | None):
    step_logits = []

    def hook(step, x, logits):  # identity; records what Dream samples from
        step_logits.append(logits.detach().clone())
        return logits

    torch.manual_seed(case["seed"])
    out = model.diffusion_generate(
        ids, generation_config=model.generation_config, attention_mask=am, mask_token_id=MASK,
        max_new_tokens=case["max_new_tokens"], steps=case["steps"], alg=case["alg"], alg_temp=case["alg_temp"],
        temperature=case["temperature"], top_p=case["top_p"], top_k=case["top_k"], eps=case["eps"],
        output_history=True, return_dict_in_generate=True, return_dict=True,
        generation_logits_hook_func=hook)
    assert len(out.history) == case["steps"] and torch.equal(out.history[-1], out.sequences)
    return out.sequences, torch.stack(out.history), step_logits


# ----------------------------------------------------------------------------------------------- replay
class Stats:
    def __init__(self):
        self.d = {
            "schedule": [],             # per step: tokens committed per row (confidence algs: k) / in all (origin)
            "min_schedule_frac": None,  # min distance of mask_count * (1 - s/t) from an integer (float32)
            "min_top1_gap": None,       # T=0: min top-1 minus top-2 probability at committed positions
            "min_sample_log_gap": None,  # T>0: min log-gap of the two best probs/Exp(1) at committed positions
            "min_select_gap": None,     # alg_temp None/0: min gap between k-th and (k+1)-th confidence of a row
            "min_select_log_gap": None,  # alg_temp>0: the same for log(softmax(conf/alg_temp) / Exp(1))
            "min_rand_gap": None,       # origin: min |rand - p_transfer| (steps before the last)
            "min_top_p_gap": None,      # min |cumulative prob - top_p| over every sorted entry of the rows filtered
            "top_k_boundary_ties": 0,   # rows whose k-th and (k+1)-th logits are equal (top_k keeps both)
            "ties": 0,                  # decisions that fell on an exact tie (argmax, top-k selection)
            "mask_id_committed": 0,     # committed tokens equal to the mask id (the position stays masked)
            "non_masked_selected": 0,   # top-k / multinomial picks of positions that were not masked
            "masks_left": 0,            # mask ids left in the answer region at the end
            "mask_id_in_x0": 0,         # drawn / argmax tokens equal to the mask id, committed or not
            "categorical_fallback": 0,  # steps where Categorical(probs) would reject probs (never seen)
        }

    def low(self, key, value):
        value = float(value)
        cur = self.d[key]
        self.d[key] = value if cur is None else min(cur, value)


def top2_gap(v: torch.Tensor) -> torch.Tensor:
    s = v.sort(dim=-1, descending=True).values
    return s[..., 0] - s[..., 1]


def filtered_logits(logits, temperature, top_p, top_k, st: Stats):
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        sl, si = torch.sort(logits, descending=True)
        cum = torch.cumsum(F.softmax(sl, dim=-1), dim=-1)
        if cum.numel():
            st.low("min_top_p_gap", (cum - top_p).abs().min())
        drop = cum > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, si, drop), torch.finfo(logits.dtype).min)
    if top_k is not None:
        k = min(top_k, logits.size(-1))
        srt = logits.sort(dim=-1, descending=True).values
        if k < logits.size(-1):  # a tie at finfo.min (top_p kept fewer than k) removes nothing either way
            kth = srt[..., k - 1]
            st.d["top_k_boundary_ties"] += int(((kth == srt[..., k]) & (kth > torch.finfo(kth.dtype).min)).sum())
        logits = logits.masked_fill(logits < srt[..., k - 1:k], torch.finfo(logits.dtype).min)
    return logits


def draw(logits, temperature, top_p, top_k, st: Stats):
    """x0 and probs of Dream's sample_tokens; the Categorical draw written as multinomial's exponential race."""
    probs = torch.softmax(filtered_logits(logits, temperature, top_p, top_k, st), dim=-1)
    if temperature > 0:
        norm = probs / probs.sum(-1, keepdim=True)  # Categorical(probs=...) normalises
        # Categorical's argument check (constraints.simplex); Dream falls back to argmax if it fails
        ok = bool(((norm >= 0).all(-1) & ((norm.sum(-1) - 1).abs() < 1e-6)).all()) and not norm.isnan().any()
        if not ok:
            st.d["categorical_fallback"] += 1
        race = norm / torch.empty_like(norm).exponential_(1)  # torch.multinomial(norm, 1), CPU
        x0 = race.argmax(-1)
        gaps = race.log().sort(-1, descending=True).values
        gap = gaps[:, 0] - gaps[:, 1] if race.shape[0] else race.new_zeros(0)
    else:
        x0 = probs.argmax(-1)
        gap = top2_gap(probs) if probs.shape[0] else probs.new_zeros(0)
    return x0, probs, gap


def replay(case, canvas: torch.Tensor, step_logits, dream_history: torch.Tensor, prompt_len: int) -> dict:
    st = Stats()
    alg, steps, T = case["alg"], case["steps"], case["temperature"]
    x = canvas.clone()
    B = x.shape[0]
    ts = torch.linspace(1, case["eps"], steps + 1)  # float32
    torch.manual_seed(case["seed"])
    for i in range(steps):
        mask_index = x == MASK
        ml = step_logits[i][mask_index]  # (N, V): masked positions of all rows, row-major
        t, s = ts[i], ts[i + 1]
        last = i == steps - 1
        if alg == "origin":
            p = 1 if last else 1 - s / t
            r = torch.rand(ml.shape[0])
            tr = r < p
            if not last and r.numel():
                st.low("min_rand_gap", (r - p).abs().min())
            x0s, _, gap = draw(ml[tr], T, case["top_p"], case["top_k"], st)
            x0 = torch.full((ml.shape[0],), MASK)
            x0[tr] = x0s
            x[mask_index] = x0
            committed_gap = gap
            st.d["schedule"].append(int(tr.sum()))
            st.d["mask_id_committed"] += int((x0s == MASK).sum())
            st.d["mask_id_in_x0"] += int((x0s == MASK).sum())
        else:
            x0, probs, gap = draw(ml, T, case["top_p"], case["top_k"], st)
            st.d["mask_id_in_x0"] += int((x0 == MASK).sum())
            if alg == "maskgit_plus":
                conf = probs.gather(-1, x0[:, None])[:, 0]
            elif alg == "topk_margin":
                conf = top2_gap(probs)
            else:
                conf = (probs * torch.log(probs + 1e-10)).sum(-1)
            num = mask_index.sum() / B  # float32 batch mean
            frac = num * (1 - s / t)
            k = int(num) if last else int(frac)
            if not last:
                st.low("min_schedule_frac", min(frac - math.floor(frac), math.ceil(frac) - frac)
                       if frac != math.floor(frac) else 0.0)
            st.d["schedule"].append(k)
            full = torch.full(x.shape, -torch.inf)
            full[mask_index] = conf
            committed_gap = x.new_zeros(0, dtype=torch.float32)
            if k > 0:
                if case["alg_temp"] is None or case["alg_temp"] == 0:
                    score = full
                else:  # torch.multinomial(w, k) without replacement, CPU: top-k of w / Exp(1)
                    w = F.softmax(full / case["alg_temp"], dim=-1)
                    score = w / torch.empty_like(w).exponential_(1)
                srt = score.sort(-1, descending=True).values
                sel = score.topk(k).indices
                if k < x.shape[1]:
                    a, b = srt[:, k - 1], srt[:, k]
                    st.d["ties"] += int((a == b).sum())
                    if case["alg_temp"] is None or case["alg_temp"] == 0:
                        fin = torch.isfinite(b)
                        if fin.any():
                            st.low("min_select_gap", (a - b)[fin].min())
                    else:
                        pos = b > 0
                        if pos.any():
                            st.low("min_select_log_gap", (a.log() - b.log())[pos].min())
                x_ = torch.full_like(x, MASK)
                x_[mask_index] = x0
                rows = torch.arange(B)[:, None].expand_as(sel)
                was_masked = mask_index[rows, sel]
                st.d["non_masked_selected"] += int((~was_masked).sum())
                st.d["mask_id_committed"] += int((x_[rows, sel][was_masked] == MASK).sum())
                # gaps at the committed (previously masked) positions
                pos_in_ml = torch.cumsum(mask_index.flatten(), 0).view_as(mask_index) - 1
                committed_gap = gap[pos_in_ml[rows, sel][was_masked]]
                x[rows, sel] = x_[rows, sel]
        if committed_gap.numel():
            st.d["ties"] += int((committed_gap == 0).sum())
            st.low("min_sample_log_gap" if T > 0 else "min_top1_gap", committed_gap.min())
        if not torch.equal(x, dream_history[i]):
            raise AssertionError(f"{case['name']}: replay differs from Dream at step {i}")
    st.d["masks_left"] = int((x[:, prompt_len:] == MASK).sum())
    return st.d


# ----------------------------------------------------------------------------------------------- main
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over name-sorted (name, dtype, shape, raw bytes): independent of the file layout."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        out |= load_file(str(f))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, type=Path)
    ap.add_argument("--out-dir", type=Path, default=FIXTURE_DIR)
    args = ap.parse_args()
    ref_dir = args.reference_dir.resolve()
    missing = [f for f in REFERENCE_FILES if not (ref_dir / f).is_file()]
    if missing:
        sys.exit(f"--reference-dir {ref_dir} lacks {missing}")
    torch.set_num_threads(1)
    out = args.out_dir.resolve()
    work = Path(tempfile.mkdtemp(prefix="dream_sampler_fixtures_"))
    os.environ["HF_MODULES_CACHE"] = str(work / "hf_modules")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import safetensors
    import transformers

    models, state_sha = {}, {}
    for name, tied in CHECKPOINTS.items():
        ckpt = FIXTURE_DIR / name  # the committed checkpoints, read only
        tensors = checkpoint_tensors(ckpt)
        models[name] = load_reference(ckpt, tensors, tied, ref_dir, work)
        state_sha[name] = state_sha256(tensors)
    name, base, row_of = MASK0_VARIANT
    tensors = checkpoint_tensors(FIXTURE_DIR / base)
    tensors[row_of] = tensors[row_of].clone()
    tensors[row_of][MASK] = 0.0
    variant = work / "variants" / name
    variant.mkdir(parents=True)
    shutil.copy(FIXTURE_DIR / base / "config.json", variant / "config.json")
    save_file(tensors, str(variant / "model.safetensors"), metadata={"format": "pt"})
    models[name] = load_reference(variant, tensors, CHECKPOINTS[base], ref_dir, work)
    state_sha[name] = state_sha256(tensors)

    prompts = make_prompts()
    results = []
    for case in case_grid():
        ids_l, am_l = prompts[case["prompt"]]
        ids = torch.tensor(ids_l)
        am = None if am_l is None else torch.tensor(am_l)
        P, G = ids.shape[1], case["max_new_tokens"]
        canvas = torch.cat([ids, torch.full((ids.shape[0], G), MASK)], dim=1)
        base_seed, reseeds = case["seed"], 0
        while True:
            seq, hist, step_logits = run_dream(models[case["checkpoint"]], case, ids, am)
            stats = replay(case, canvas, step_logits, hist, P)
            random = case["temperature"] > 0 or case["alg"] == "origin" or case["alg_temp"] not in (None, 0)
            if stats["ties"] == 0 and stats["top_k_boundary_ties"] == 0 or not random or reseeds == MAX_RESEEDS:
                break
            reseeds += 1
            case["seed"] = base_seed + 1000 * reseeds
        assert stats["categorical_fallback"] == 0, case["name"]
        assert torch.equal(seq[:, :P], ids) or stats["non_masked_selected"], case["name"]
        gen = seq[:, P:]
        stats["distinct_generated"] = int(gen.unique().numel())
        stats["reseeded_from"] = base_seed if reseeds else None
        stats["exact_ties"] = bool(stats["ties"] or stats["top_k_boundary_ties"])
        # margins move by ~1e-7 with the thread count; 3 significant digits keep the file reproducible
        stats = {k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in stats.items()}
        rec = {"name": case.pop("name"), "checkpoint": case.pop("checkpoint"), "prompt_name": case.pop("prompt"),
               "input_ids": ids_l, "attention_mask": am_l, **case, "sequences": seq.tolist(),
               "history": hist.tolist(), "stats": stats}
        results.append(rec)
        print(f"{rec['name']:42s} seed={rec['seed']:5d} sched={stats['schedule']} "
              f"mask_committed={stats['mask_id_committed']} nonmasked={stats['non_masked_selected']} "
              f"left={stats['masks_left']} ties={stats['exact_ties']}", flush=True)

    (out / "sampler_cases.json").write_text(
        "[\n" + ",\n".join(json.dumps(r, separators=(",", ":")) for r in results) + "\n]\n")
    files = sorted(p for n in CHECKPOINTS for p in (FIXTURE_DIR / n).iterdir())
    manifest = {
        "derived_with": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                         "device": "cpu", "threads": 1},
        "command": "OMP_NUM_THREADS=1 /work/refenv/bin/python scripts/derive_dream_sampler_fixtures.py "
                   "--reference-dir /tmp/dream_ref/ref",
        "reference_sha256": {f: sha256(ref_dir / f) for f in REFERENCE_FILES},
        "checkpoint_sha256": {str(p.relative_to(FIXTURE_DIR)): sha256(p) for p in files},
        "state_sha256": state_sha,
        "tiny_tied_mask0": {"from": MASK0_VARIANT[1], "zeroed": f"{MASK0_VARIANT[2]}[{MASK}]",
                            "files": "config.json copied; model.safetensors = the edited tensors"},
        "mask_id": MASK, "pad_id": PAD, "eps": EPS,
        "cases": len(results),
        "sampler_cases_sha256": sha256(out / "sampler_cases.json"),
    }
    (out / "sampler_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {len(results)} cases to {out}")


if __name__ == "__main__":
    main()
