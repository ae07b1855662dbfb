#!/usr/bin/env python
"""Derive LLaDA parity fixtures from the reference implementation.

Run with an environment that has torch, safetensors and transformers 4.x (the
LLaDA remote code cannot be loaded by transformers 5.x)::

    python scripts/derive_llada_fixtures.py --reference-dir /path/to/llada_ref

``--reference-dir`` must hold the four reference files, extracted by the user
from the reference repositories (see tests/fixtures/llada/README.md):

    modeling_llada.py, configuration_llada.py   (HF remote code of LLaDA-8B-Instruct)
    generate.py, get_log_likelihood.py          (ML-GSAI/LLaDA)

This script contains no reference code: it copies the two remote-code files
next to a generated checkpoint, loads it with
``AutoModel.from_pretrained(..., trust_remote_code=True)`` and imports
``generate`` / ``get_log_likelihood`` from the reference directory.

Outputs (tests/fixtures/llada/): tiny/ (checkpoint), expected_logits.safetensors,
generate_cases.json, loglikelihood_cases.json, manifest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "llada"
REFERENCE_FILES = ("modeling_llada.py", "configuration_llada.py", "generate.py", "get_log_likelihood.py")

TINY_MASK, TINY_EOS, TINY_PAD = 250, 251, 252
BIG_MASK, BIG_PAD = 126336, 126081
EOS_ID, EOT_ID = 126081, 126348  # hard-coded in the reference generate()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def dump_cases(cases) -> str:
    """JSON list, one key per line, values compact (keeps id lists on one line)."""
    body = ",\n".join(
        "  {\n" + ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in c.items()) + "\n  }" for c in cases
    )
    return "[\n" + body + "\n]\n"


def reference_and_out_dirs(args, files) -> tuple[Path, Path]:
    """A fixture script's ``--reference-dir`` (it must hold ``files``: else exit naming the missing
    ones) and ``--out-dir`` (created), both resolved."""
    ref_dir = args.reference_dir.resolve()
    missing = [f for f in files if not (ref_dir / f).is_file()]
    if missing:
        sys.exit(f"--reference-dir {ref_dir} lacks {missing}")
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    return ref_dir, out_dir


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, type=Path)
    ap.add_argument("--out-dir", type=Path, default=FIXTURE_DIR)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1 for stability)")
    return ap.parse_args()


def main():
    args = parse_args()
    ref_dir, out_dir = reference_and_out_dirs(args, REFERENCE_FILES)

    work = Path(tempfile.mkdtemp(prefix="llada_fixtures_"))
    # Keep transformers' dynamic-module cache out of the user's home.
    os.environ["HF_MODULES_CACHE"] = str(work / "hf_modules")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    sys.dont_write_bytecode = True  # no __pycache__ in the fixture or reference dirs
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModel

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(FIXTURE_DIR))
    import make_checkpoint as mc  # noqa: E402

    sys.path.insert(0, str(ref_dir))
    ref_generate = importlib.import_module("generate")
    ref_ll = importlib.import_module("get_log_likelihood")

    # ------------------------------------------------------------------ checkpoints
    tiny_dir = out_dir / "tiny"
    if tiny_dir.exists():
        shutil.rmtree(tiny_dir)
    mc.make_llada_checkpoint(tiny_dir, **mc.TINY)
    big_dir = work / "big"
    mc.make_llada_checkpoint(big_dir, **mc.BIG)

    # Determinism: regenerate twice and compare bytes / tensors.
    for name, spec, d in (("tiny", mc.TINY, tiny_dir), ("big", mc.BIG, big_dir)):
        again = work / f"{name}_again"
        mc.make_llada_checkpoint(again, **spec)
        files = sorted(p.name for p in d.iterdir())
        assert files == sorted(p.name for p in again.iterdir()), name
        for fn in files:
            assert (d / fn).read_bytes() == (again / fn).read_bytes(), f"{name}/{fn} not reproducible"
        shutil.rmtree(again)

    def expected_state(spec):
        over = {k: v for k, v in spec.items() if k not in ("seed", "shards", "head_row_scale")}
        return mc.make_state_dict(mc.build_config(**over), spec["seed"], spec.get("head_row_scale"))

    def load_reference(ckpt_dir: Path, tag: str):
        tmp = work / f"ref_{tag}"
        shutil.copytree(ckpt_dir, tmp)
        for f in ("modeling_llada.py", "configuration_llada.py"):
            shutil.copy(ref_dir / f, tmp / f)
        model, info = AutoModel.from_pretrained(
            str(tmp), trust_remote_code=True, torch_dtype=torch.float32, output_loading_info=True
        )
        bad = {k: v for k, v in info.items() if v}
        if bad:
            raise RuntimeError(f"reference load of {tag} reported {bad}")
        model = model.eval()
        # Loaded weights must be exactly the generated ones.
        expected = expected_state(mc.TINY if tag == "tiny" else mc.BIG)
        got = model.state_dict()
        assert set(got) == set(expected), (tag, set(got) ^ set(expected))
        for k, v in expected.items():
            assert torch.equal(got[k], v), (tag, k)
        return model

    tiny = load_reference(tiny_dir, "tiny")
    big = load_reference(big_dir, "big")
    models = {"tiny": tiny, "big": big}

    # ------------------------------------------------------------------ logits
    tensors = {}
    with torch.no_grad():
        g = torch.Generator().manual_seed(1234)
        ids = torch.randint(0, TINY_MASK, (3, 16), generator=g)
        pads = [0, 3, 7]
        am = torch.ones(3, 16, dtype=torch.long)
        ids_p = ids.clone()
        for r, n in enumerate(pads):
            am[r, :n] = 0
            ids_p[r, :n] = TINY_PAD
        tensors["tiny.input_ids"] = ids
        tensors["tiny.logits"] = tiny(ids).logits.float()
        tensors["tiny.padded.input_ids"] = ids_p
        tensors["tiny.padded.attention_mask"] = am
        tensors["tiny.padded.logits"] = tiny(ids_p, attention_mask=am).logits.float()
        tensors["tiny.padded.logits_no_mask"] = tiny(ids_p).logits.float()
        # sanity: an all-ones mask is a no-op; padded rows differ, the unpadded row does not.
        assert torch.equal(tiny(ids, attention_mask=torch.ones_like(ids)).logits, tensors["tiny.logits"])
        assert torch.equal(tensors["tiny.padded.logits"][0], tensors["tiny.logits"][0])
        for r, n in enumerate(pads):
            if n:
                assert not torch.allclose(tensors["tiny.padded.logits"][r], tensors["tiny.padded.logits_no_mask"][r])
                # RoPE is relative, so a masked left-padded row equals the unpadded suffix run alone.
                alone = tiny(ids_p[r:r + 1, n:]).logits[0]
                diff = (alone - tensors["tiny.padded.logits"][r, n:]).abs().max().item()
                print(f"tiny padded row {r}: max |logits - logits(unpadded suffix alone)| = {diff:.3g}")

        g = torch.Generator().manual_seed(4321)
        ids = torch.randint(0, 126000, (2, 8), generator=g)
        am = torch.ones(2, 8, dtype=torch.long)
        am[1, :3] = 0
        ids_p = ids.clone()
        ids_p[1, :3] = BIG_PAD
        slices = {"0_512": (0, 512), "126070_126090": (126070, 126091), "126336_126350": (126336, 126351)}
        for tag, x, m in (("big", ids, None), ("big.padded", ids_p, am)):
            lg = big(x, attention_mask=m).logits.float()
            tensors[f"{tag}.input_ids"] = x
            if m is not None:
                tensors[f"{tag}.attention_mask"] = m
            for sname, (a, b) in slices.items():
                tensors[f"{tag}.logits[{a}:{b}]"] = lg[..., a:b].contiguous()
            tensors[f"{tag}.argmax"] = lg.argmax(-1)
            tensors[f"{tag}.max"] = lg.max(-1).values
            tensors[f"{tag}.logsumexp"] = torch.logsumexp(lg, -1)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out_dir / "expected_logits.safetensors"), metadata={
        "note": "reference LLaDA logits on the tiny/big fixture checkpoints; see README.md",
        "big.logit_slices": json.dumps({k: list(v) for k, v in slices.items()}),
    })

    # ------------------------------------------------------------------ generate cases
    def prompts(seed, b, l, hi):
        return torch.randint(0, hi, (b, l), generator=torch.Generator().manual_seed(seed))

    p1 = prompts(10, 1, 8, TINY_MASK)
    p2 = prompts(11, 2, 6, TINY_MASK)
    p3 = prompts(12, 3, 8, TINY_MASK)
    # left-padded batch: true lengths 8, 5, 2
    lens = [8, 5, 2]
    raw = prompts(13, 3, 8, TINY_MASK)
    singles = [raw[i, 8 - n:].clone() for i, n in enumerate(lens)]
    pad_ids = torch.full((3, 8), TINY_PAD, dtype=torch.long)
    pad_am = torch.zeros(3, 8, dtype=torch.long)
    for i, s in enumerate(singles):
        pad_ids[i, 8 - len(s):] = s
        pad_am[i, 8 - len(s):] = 1
    bp = prompts(21, 2, 6, 126000)
    bp2 = prompts(20, 2, 6, 126000)

    def ones(p):
        return torch.ones_like(p)

    base = dict(steps=16, gen_length=16, block_length=16, temperature=0.0, cfg_scale=0.0,
                remasking="low_confidence", logits_eos_inf=False, confidence_eos_eot_inf=False)
    T = dict(checkpoint="tiny", mask_id=TINY_MASK)
    B = dict(checkpoint="big", mask_id=BIG_MASK)
    specs = [
        ("t0_single_block", T, p1, None, {}, 0),
        ("t0_semi_ar_gen32_block8_steps16", T, p1, None, dict(gen_length=32, block_length=8, steps=16), 0),
        ("t0_remainder_gen12_block12_steps5", T, p1, None, dict(gen_length=12, block_length=12, steps=5), 0),
        ("t0_remainder_semi_ar_gen24_block12_steps10", T, p2, None, dict(gen_length=24, block_length=12, steps=10), 0),
        ("t0_steps_eq_1_per_block", T, p1, None, dict(gen_length=16, block_length=4, steps=4), 0),
        ("t0_batch3_equal_length", T, p3, None, dict(gen_length=16, block_length=8, steps=8), 0),
        ("t0_left_padded_batch_with_mask", T, pad_ids, pad_am, dict(gen_length=16, block_length=8, steps=8), 0),
        ("t0_left_padded_batch_no_mask", T, pad_ids, None, dict(gen_length=16, block_length=8, steps=8), 0),
    ]
    for i, s in enumerate(singles):
        specs.append((f"t0_unbatched_{i}_len{len(s)}", T, s[None], None, dict(gen_length=16, block_length=8, steps=8), 0))
    specs += [
        ("t0_remasking_random", T, p2, None, dict(remasking="random"), 7),
        ("t0_remasking_random_semi_ar", T, p2, None, dict(remasking="random", gen_length=16, block_length=8, steps=8), 8),
        ("temp0.7_low_confidence", T, p2, None, dict(temperature=0.7), 1),
        ("temp1.0_low_confidence", T, p2, None, dict(temperature=1.0), 2),
        ("temp1.0_low_confidence_semi_ar_remainder", T, p2, None, dict(temperature=1.0, gen_length=16, block_length=8, steps=6), 3),
        ("temp0.7_remasking_random", T, p2, None, dict(temperature=0.7, remasking="random"), 4),
        ("cfg1.0_ones_mask", T, p2, ones(p2), dict(cfg_scale=1.0), 0),
        ("cfg2.0_ones_mask_semi_ar", T, p2, ones(p2), dict(cfg_scale=2.0, gen_length=16, block_length=8, steps=8), 0),
        ("cfg1.0_padded_mask", T, pad_ids, pad_am, dict(cfg_scale=1.0, gen_length=16, block_length=8, steps=8), 0),
        ("cfg1.5_temp0.7_ones_mask", T, p2, ones(p2), dict(cfg_scale=1.5, temperature=0.7), 5),
        ("big_t0_baseline", B, bp, None, dict(gen_length=16, block_length=8, steps=8), 0),
        ("big_t0_logits_eos_inf", B, bp, None, dict(logits_eos_inf=True, gen_length=16, block_length=8, steps=8), 0),
        ("big_t0_confidence_eos_eot_inf", B, bp, None, dict(confidence_eos_eot_inf=True, gen_length=16, block_length=8, steps=8), 0),
        ("big_t0_both_eos_options", B, bp, None, dict(logits_eos_inf=True, confidence_eos_eot_inf=True, gen_length=16, block_length=8, steps=8), 0),
        ("big_temp0.8_baseline", B, bp, None, dict(temperature=0.8, gen_length=16, block_length=8, steps=8), 11),
        ("big_temp0.8_confidence_eos_eot_inf", B, bp, None, dict(temperature=0.8, confidence_eos_eot_inf=True, gen_length=16, block_length=8, steps=8), 11),
        ("big_temp0.8_baseline_prompt2", B, bp2, None, dict(temperature=0.8, gen_length=16, block_length=8, steps=8), 19),
        ("big_temp0.8_logits_eos_inf_prompt2", B, bp2, None, dict(temperature=0.8, logits_eos_inf=True, gen_length=16, block_length=8, steps=8), 19),
        ("big_t0_single_block_both_eos_options", B, bp2, None, dict(logits_eos_inf=True, confidence_eos_eot_inf=True), 0),
        ("big_temp0.8_single_block_confidence_eos_eot_inf", B, bp2, None, dict(temperature=0.8, confidence_eos_eot_inf=True), 12),
    ]

    class TorchProbe:
        """Stands in for the ``torch`` global of the reference generate module and
        measures how close each decision was (nothing is changed):

        * argmax: gap between the best and second-best score at the positions that
          get committed (logit units; at T > 0 the log-ratio of the noisy scores);
        * topk: relative gap between the k-th and (k+1)-th confidence of each row,
          and exact ties there (then torch.topk's own tie order decides).
        """

        def __init__(self):
            self.stats = dict(forward_steps=0, min_argmax_gap=float("inf"), min_topk_rel_gap=float("inf"),
                              topk_boundary_ties=0, topk_picks_minus_inf=0)
            self._gaps, self._row = None, 0

        def __getattr__(self, name):
            return getattr(torch, name)

        def argmax(self, input, dim=None, keepdim=False):
            top2 = input.topk(2, dim=-1).values.double()
            if input.dtype == torch.float64:  # T > 0: exp(logits) / gumbel
                self._gaps = top2[..., 0].log() - top2[..., 1].log()
            else:
                self._gaps = top2[..., 0] - top2[..., 1]
            self._row = 0
            self.stats["forward_steps"] += 1
            return torch.argmax(input, dim=dim, keepdim=keepdim)

        def topk(self, input, k):
            res = torch.topk(input, k=k)
            k = int(k)
            v = input.double().sort(descending=True).values
            st = self.stats
            if 0 < k < v.numel():
                hi, lo = float(v[k - 1]), float(v[k])
                if hi == float("-inf"):
                    st["topk_picks_minus_inf"] += 1
                elif hi == lo:
                    st["topk_boundary_ties"] += 1
                else:
                    st["min_topk_rel_gap"] = min(st["min_topk_rel_gap"], (hi - lo) / max(abs(hi), 1e-300))
            if k > 0 and self._gaps is not None:
                g = self._gaps[self._row, res.indices]
                st["min_argmax_gap"] = min(st["min_argmax_gap"], float(g.min()))
            self._row += 1
            return res

    cases = []
    for name, ck, prompt, mask, over, seed in specs:
        kw = dict(base)
        kw.update(over)
        kw["mask_id"] = ck["mask_id"]
        assert not (prompt == kw["mask_id"]).any(), name
        model = models[ck["checkpoint"]]
        probe = TorchProbe()
        ref_generate.torch = probe
        try:
            torch.manual_seed(seed)
            out = ref_generate.generate(model, prompt.clone(), attention_mask=None if mask is None else mask.clone(), **kw)
        finally:
            ref_generate.torch = torch
        gen = out[:, prompt.shape[1]:]
        case = {
            "name": name,
            "checkpoint": ck["checkpoint"],
            "seed": seed,
            "prompt": prompt.tolist(),
            "attention_mask": None if mask is None else mask.tolist(),
            **kw,
            "output": out.tolist(),
            "stats": {
                "masks_left": int((gen == kw["mask_id"]).sum()),
                "eos_generated": int((gen == EOS_ID).sum()),
                "eot_generated": int((gen == EOT_ID).sum()),
                "distinct_generated": int(gen.unique().numel()),
                **{k: (None if v == float("inf") else v) for k, v in probe.stats.items()},
            },
        }
        cases.append(case)
        print(f"{name:45s} {case['stats']}")
    (out_dir / "generate_cases.json").write_text(dump_cases(cases))

    # ------------------------------------------------------------------ log-likelihood cases
    lp = prompts(30, 1, 10, TINY_MASK)[0]
    la = prompts(31, 1, 6, TINY_MASK)[0]
    ll_specs = [
        ("mc8_bs4", lp, la, 8, 4, 0.0, 0),
        ("mc_eq_bs_4", lp, la, 4, 4, 0.0, 1),
        ("mc16_bs8_cfg1.0", lp, la, 16, 8, 1.0, 2),
        ("mc6_bs4_remainder_dropped", lp, la, 6, 4, 0.0, 3),
        ("single_token_answer_mc1_bs1", lp, la[:1], 1, 1, 0.0, 4),
        ("short_prompt_long_answer_mc12_bs3", lp[:3], prompts(32, 1, 13, TINY_MASK)[0], 12, 3, 0.0, 5),
    ]
    ll_cases = []
    for name, p, a, mc_num, bs, cfg, seed in ll_specs:
        torch.manual_seed(seed)
        v = ref_ll.get_log_likelihood(tiny, p.clone(), a.clone(), mc_num=mc_num, batch_size=bs, cfg_scale=cfg, mask_id=TINY_MASK)
        ll_cases.append({"name": name, "checkpoint": "tiny", "prompt": p.tolist(), "answer": a.tolist(),
                         "mc_num": mc_num, "batch_size": bs, "cfg_scale": cfg, "mask_id": TINY_MASK,
                         "seed": seed, "value": float(v)})
        print(f"{name:45s} {v!r}")
    (out_dir / "loglikelihood_cases.json").write_text(dump_cases(ll_cases))

    # ------------------------------------------------------------------ manifest
    manifest = {
        "checkpoints": {
            "tiny": {"path": "tiny", "make_llada_checkpoint_kwargs": mc.TINY,
                     "state_sha256": mc.state_dict_sha256(expected_state(mc.TINY))},
            "big": {"path": None, "make_llada_checkpoint_kwargs": mc.BIG,
                    "state_sha256": mc.state_dict_sha256(expected_state(mc.BIG))},
        },
        "reference_files_sha256": {f: sha256_file(ref_dir / f) for f in REFERENCE_FILES},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "torch_num_threads": args.threads,
        "command": "python scripts/derive_llada_fixtures.py --reference-dir <dir>",
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print("wrote", out_dir)


if __name__ == "__main__":
    main()
