#!/usr/bin/env python
"""Derive WINO parity fixtures (tests/fixtures/wino/) from the reference implementation.

Run with an environment that has torch, safetensors, numpy and transformers 4.x (the reference
modeling file cannot be imported with transformers 5.x)::

    /work/refenv/bin/python scripts/derive_wino_fixtures.py --reference-dir /tmp/wino_ref

``--reference-dir`` must hold three files of Feng-Hong/WINO-DLLM ``LLaDA/``, extracted by the user
in the reference's own layout (``modeling_llada.py`` does ``from configuration_llada import ...``)::

    REF=/tmp/wino_ref && mkdir -p $REF
    for f in decoding.py modeling_llada.py configuration_llada.py; do
        git -C <WINO-DLLM clone> show 9549a1d:LLaDA/$f > $REF/$f
    done

This script contains no reference code. It builds tiny LLaDA-format checkpoints with
``tests/fixtures/llada/make_checkpoint.py`` (the specs of tests/fixtures/fast: ``plain`` / ``medium``
/ ``sharp`` head scales; the checkpoints are not committed, the tests rebuild them from the recorded
kwargs and check their state hash), loads them with the reference ``LLaDAModelLM`` (no missing or
unexpected keys, weights equal to the generated ones) and records what ``decoding_wino`` returns
(ids and its step count = forward passes) over a grid of settings.

While a case runs the model's ``forward`` is wrapped by a probe that records each pass's input
canvas and logits and the torch RNG state right after the pass (the reference draws its Gumbel noise
just after). From these the probe measures each decision (how close confidences came to the
thresholds, rank gaps where a top-k or argmax decided, argmax gaps of committed tokens), counts the
tokens accepted and remasked at each pass (from consecutive canvases) and checks those counts
against the rule described in tests/fixtures/wino/README.md. Every case is run a second time without
the probe and must give the same ids and step count.
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
from derive_llada_fixtures import dump_cases, reference_and_out_dirs, sha256_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "wino"
LLADA_FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "llada"
REFERENCE_FILES = ("decoding.py", "modeling_llada.py", "configuration_llada.py")
REFERENCE_COMMIT = "9549a1d0c3cbd9dc9b8f7cd09be8a7aac322d6fb"  # Feng-Hong/WINO-DLLM, newest when derived

MASK, EOS, PAD, VOCAB = 250, 251, 252, 256
HEAD_SCALES = {"plain": 1.0, "medium": 4.0, "sharp": 6.0}
SIZES = dict(vocab_size=VOCAB, embedding_size=VOCAB, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2,
             mlp_hidden_size=128, mlp_ratio=2, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD)
MAX_ACCEPT = (0.7, 5, 20)  # the reference's clip(int(0.7 * masks), 5, 20)
FIRST_LAST_ACCEPT = 30  # the reference's initial last_accept of every block


def head_row_scale(scale: float) -> dict:
    """The mask row zeroed (never proposed); other rows scaled (logit std about 2, 8, 12)."""
    return {MASK: 0.0} if scale == 1.0 else {**{i: scale for i in range(VOCAB)}, MASK: 0.0}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, type=Path)
    ap.add_argument("--out-dir", type=Path, default=FIXTURE_DIR)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    return ap.parse_args()


class Probe:
    """Wraps ``model.forward``: records (canvas, position ids, logits, RNG state after the pass)."""

    def __init__(self, torch, model):
        self.torch, self.model, self.orig = torch, model, model.forward
        self.calls = []

    def __enter__(self):
        def wrapped(*args, **kwargs):
            out = self.orig(*args, **kwargs)
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.calls.append((ids.clone(), kwargs["position_ids"].clone(), out.logits.detach().clone(),
                               self.torch.get_rng_state()))
            return out

        self.model.forward = wrapped
        return self

    def __exit__(self, *exc):
        self.model.forward = self.orig


def analyse(torch, F, ref, calls, final, P, G, bl, temperature, thr, thr_back):
    """Per pass: accepted / remasked counts (from consecutive canvases), decision margins, and a
    check that the counts follow the rule of the README."""
    st = dict(min_threshold_margin=math.inf, min_back_margin=math.inf, min_rank_rel_gap=math.inf,
              min_argmax_gap=math.inf, ties=0)
    accepted, remasked = [], []
    last_accept, block = FIRST_LAST_ACCEPT, None
    canvases = [c[0][:, :P + G] for c in calls] + [final]
    for t, (ids, pos, logits, rng) in enumerate(calls):
        s = int(pos[-bl])
        e = s + bl
        if s != block:
            block, last_accept = s, FIRST_LAST_ACCEPT
        x, nxt = canvases[t][0], canvases[t + 1][0]
        masked = (x == MASK).nonzero().flatten()
        masked = masked[masked < e]
        acc = ((x == MASK) & (nxt != MASK)).nonzero().flatten().tolist()
        rem = ((x != MASK) & (nxt == MASK)).nonzero().flatten().tolist()
        if any(not s <= i < e for i in acc + rem):
            raise RuntimeError("a change outside the current block")
        accepted.append(len(acc))
        remasked.append(len(rem))
        # replay the Gumbel draw the reference made right after this pass
        if temperature > 0:
            saved = torch.get_rng_state()
            torch.set_rng_state(rng)
            scores = ref.add_gumbel_noise(logits, temperature=temperature)[0]
            torch.set_rng_state(saved)
        else:
            scores = logits[0]
        p = F.softmax(logits[0].double(), dim=-1)
        x0 = scores.argmax(-1)
        conf = p[masked, x0[masked]].tolist()
        for c in conf:
            st["ties"] += c == thr
            st["min_threshold_margin"] = min(st["min_threshold_margin"], abs(c - thr))
        top2 = scores[masked].double().topk(2, dim=-1).values
        gaps = (top2[:, 0].log() - top2[:, 1].log()) if temperature > 0 else top2[:, 0] - top2[:, 1]
        for i, g in zip(masked.tolist(), gaps.tolist()):
            if i in acc:
                st["ties"] += g == 0
                st["min_argmax_gap"] = min(st["min_argmax_gap"], g)
        ranked = sorted(conf, reverse=True)
        max_accept = min(max(int(torch.tensor(len(conf)) * MAX_ACCEPT[0]), MAX_ACCEPT[1]), MAX_ACCEPT[2])
        above = sum(c > thr for c in ranked)
        want = max_accept if above > max_accept else max(above, 1)
        if want < len(ranked) and (above > max_accept or above == 0):
            _rank(st, ranked[want - 1], ranked[want])
        if len(acc) != want:
            raise RuntimeError(f"pass {t}: accepted {len(acc)}, the rule says {want}")
        # narrow-out: leave-one-out probability of each block token visible before the pass
        vis = [i for i in range(s, e) if x[i] != MASK]
        back = [float(p[P + G + i - s, x[i]]) for i in vis]
        for c in back:
            st["ties"] += c == thr_back
            st["min_back_margin"] = min(st["min_back_margin"], abs(c - thr_back))
        below = sum(c < thr_back for c in back)
        if len(acc) <= 1:
            want_r = 0
        elif below >= last_accept:
            want_r = last_accept - 1
            low = sorted(back)
            if 0 < want_r < len(low):
                _rank(st, -low[want_r - 1], -low[want_r])
        else:
            want_r = below
        if len(rem) != want_r:
            raise RuntimeError(f"pass {t}: remasked {len(rem)}, the rule says {want_r}")
        last_accept = len(acc)
    return st, accepted, remasked


def _rank(st, hi, lo):
    if hi == lo:
        st["ties"] += 1
    else:
        st["min_rank_rel_gap"] = min(st["min_rank_rel_gap"], (hi - lo) / max(abs(hi), 1e-300))


def main():
    args = parse_args()
    ref_dir, out_dir = reference_and_out_dirs(args, REFERENCE_FILES)
    work = Path(tempfile.mkdtemp(prefix="wino_fixtures_"))

    sys.dont_write_bytecode = True
    import numpy
    import safetensors
    import torch
    import torch.nn.functional as F
    import transformers

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(LLADA_FIXTURE_DIR))
    import make_checkpoint as mc  # noqa: E402

    sys.path.insert(0, str(ref_dir))
    ref = importlib.import_module("decoding")
    from modeling_llada import LLaDAModelLM  # noqa: E402

    models, ckpt_meta = {}, {}
    for name, scale in HEAD_SCALES.items():
        spec = dict(seed=0, shards=1, head_row_scale=head_row_scale(scale), **SIZES)
        d = work / name
        mc.make_llada_checkpoint(d, **spec)
        model, info = LLaDAModelLM.from_pretrained(str(d), torch_dtype=torch.float32, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        if bad:
            raise RuntimeError(f"reference load of {name} reported {bad}")
        over = {k: v for k, v in spec.items() if k not in ("seed", "shards", "head_row_scale")}
        expected = mc.make_state_dict(mc.build_config(**over), spec["seed"], spec["head_row_scale"])
        got = model.eval().state_dict()
        assert set(got) == set(expected), (name, set(got) ^ set(expected))
        for k, v in expected.items():
            assert torch.equal(got[k], v), (name, k)
        models[name] = model
        ckpt_meta[name] = {"head_scale": scale, "make_llada_checkpoint_kwargs": {**spec, "head_row_scale": None},
                           "state_sha256": mc.state_dict_sha256(expected),
                           "model.safetensors_sha256": sha256_file(d / "model.safetensors")}

    def prompt(seed, n):
        return torch.randint(0, MASK, (1, n), generator=torch.Generator().manual_seed(seed))

    P = {"p8": prompt(100, 8), "p5": prompt(102, 5), "p10": prompt(103, 10), "p12": prompt(104, 12),
         "p3": prompt(105, 3)}

    def g(gen, blk, **kw):
        return dict(gen_length=gen, block_length=blk, **kw)

    # (tag, checkpoint, prompt, settings, seed)
    specs = [
        ("gen32_blk32", "sharp", "p8", g(32, 32), 0),
        ("gen32_blk32", "medium", "p8", g(32, 32), 0),
        ("gen64_blk32", "sharp", "p10", g(64, 32), 0),
        ("gen64_blk32", "medium", "p5", g(64, 32), 0),
        ("gen32_blk32", "plain", "p8", g(32, 32), 0),
        ("gen32_blk8", "sharp", "p12", g(32, 8), 0),
        ("gen48_blk16", "medium", "p3", g(48, 16), 0),
        ("gen64_blk64", "sharp", "p5", g(64, 64), 0),
        ("gen32_blk32_thr0.5_back0.95", "medium", "p10", g(32, 32, threshold=0.5, threshold_back=0.95), 0),
        ("gen64_blk32_thr0.5_back0.95", "sharp", "p8", g(64, 32, threshold=0.5, threshold_back=0.95), 0),
        ("gen32_blk32_thr0.8_back0.8", "sharp", "p12", g(32, 32, threshold=0.8, threshold_back=0.8), 0),
        ("gen64_blk32_thr0.3_back0.99", "medium", "p8", g(64, 32, threshold=0.3, threshold_back=0.99), 0),
        ("gen32_blk16_thr0.9_back0.5", "sharp", "p5", g(32, 16, threshold=0.9, threshold_back=0.5), 0),
        ("gen32_blk32_t1", "sharp", "p8", g(32, 32, temperature=1.0), 1),
        ("gen64_blk32_t1", "medium", "p10", g(64, 32, temperature=1.0), 2),
        ("gen32_blk16_t0.7_thr0.5_back0.95", "sharp", "p5", g(32, 16, temperature=0.7, threshold=0.5,
                                                               threshold_back=0.95), 3),
    ]

    cases, dropped = [], []
    for tag, ck, pname, settings, seed in specs:
        kw = dict(temperature=0.0, threshold=0.6, threshold_back=0.9)
        kw.update(settings)
        kw["mask_id"] = MASK
        pr = P[pname]
        model = models[ck]
        with Probe(torch, model) as probe:
            torch.manual_seed(seed)
            out, nfe = ref.decoding_wino(model, pr.clone(), **kw)
        torch.manual_seed(seed)
        out2, nfe2 = ref.decoding_wino(model, pr.clone(), **kw)
        if not (torch.equal(out, out2) and nfe == nfe2):
            raise RuntimeError(f"{tag}: not deterministic (or the probe changed the result)")
        if nfe != len(probe.calls):
            raise RuntimeError(f"{tag}: steps {nfe} but {len(probe.calls)} forward passes")
        margins, accepted, remasked = analyse(torch, F, ref, probe.calls, out, pr.shape[1], kw["gen_length"],
                                              kw["block_length"], kw["temperature"], kw["threshold"],
                                              kw["threshold_back"])
        margins = {k: (None if v == math.inf else v) for k, v in margins.items()}
        name = f"{tag}_{ck}"
        case = {"name": name, "checkpoint": ck, "seed": seed, "prompt": pr.tolist(),
                **{k: kw[k] for k in ("gen_length", "block_length", "temperature", "threshold", "threshold_back",
                                      "mask_id")},
                "output": out.tolist(), "nfe": int(nfe), "masks_left": int((out[:, pr.shape[1]:] == MASK).sum()),
                "remasks": sum(remasked), "passes_with_remasks": sum(r > 0 for r in remasked),
                "accepted_per_pass": accepted, "remasked_per_pass": remasked, "margins": margins}
        if margins["ties"]:
            dropped.append(name)
            print(f"DROPPED (ties) {name}")
            continue
        cases.append(case)
        print(f"{name:48s} nfe {nfe:3d} remasks {sum(remasked):3d} in {case['passes_with_remasks']:2d} passes "
              f"max acc {max(accepted):2d} thr {margins['min_threshold_margin'] or 0:.2g} "
              f"back {margins['min_back_margin'] or 0:.2g} rank {margins['min_rank_rel_gap'] or 0:.2g} "
              f"gap {margins['min_argmax_gap'] or 0:.2g}")
    (out_dir / "cases.json").write_text(dump_cases(cases))

    manifest = {
        "reference": {"repository": "Feng-Hong/WINO-DLLM", "commit": REFERENCE_COMMIT, "path": "LLaDA/",
                      "function": "decoding.decoding_wino",
                      "files_sha256": {f: sha256_file(ref_dir / f) for f in REFERENCE_FILES}},
        "checkpoints": ckpt_meta,
        "checkpoint_note": "head_row_scale: every row of the output head times head_scale, the mask row (250) "
                           "zeroed ({250: 0.0} alone for plain); rebuilt by the tests",
        "cases": {"count": len(cases), "dropped_for_ties": dropped,
                  "with_remasks": [c["name"] for c in cases if c["remasks"]],
                  "with_masks_left": [c["name"] for c in cases if c["masks_left"]]},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                     "numpy": numpy.__version__},
        "torch_num_threads": args.threads,
        "command": "/work/refenv/bin/python scripts/derive_wino_fixtures.py --reference-dir /tmp/wino_ref",
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"{len(cases)} cases, dropped {dropped}; {sum(1 for c in cases if c['remasks'])} with remasks; "
          f"wrote {out_dir}")


if __name__ == "__main__":
    main()
