#!/usr/bin/env python
"""Derive ReMDM parity fixtures (tests/fixtures/remdm/) by running the reference code.

Run with an environment that has torch, safetensors, numpy and transformers 4.x::

    /work/refenv/bin/python scripts/derive_remdm_fixtures.py --reference-dir /tmp/remdm_ref

``--reference-dir`` holds files extracted by the user (see tests/fixtures/remdm/README.md)::

    eval_llada.py              guanghanwang/ReMDM-LLaDA 169c9b9 (llada_remdm_sample, _sample_categorical)
    diffusion.py               kuleshov-group/remdm f830d65 (Diffusion._ddpm_caching_update, _sample_categorical)
    model/__init__.py, model/modeling_llada.py, model/configuration_llada.py
                               NVlabs/Fast-dLLM a9b81e4 v1/llada/model/ (the LLaDA model class)

This script contains no reference code. ``eval_llada.py`` imports lm_eval / accelerate, so the
two functions are taken from it with ``ast`` and executed unmodified with the globals they use
(torch, F, np, _sample_categorical); ``llada_remdm_sample`` runs on a small object holding what it
reads from ``self`` (model, mask_id, mask_length, sampling_steps, block_size, remdm_number,
tokenizer.eos_token_id). The model is the reference ``LLaDAModelLM`` loaded from tiny
checkpoints written by tests/fixtures/llada/make_checkpoint.py, wrapped to count forward passes
and to check that no pass ever sees an unexpected number of masks (which would mean the mask id
itself was committed; such cases are refused). ``Diffusion._ddpm_caching_update`` of the paper's
code runs on fixed probabilities (``p_x0`` given, so no model) with a stub ``self``.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from derive_llada_fixtures import dump_cases, reference_and_out_dirs, sha256_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "remdm"
LLADA_FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "llada"
REFERENCE_FILES = ("eval_llada.py", "diffusion.py", "model/__init__.py", "model/modeling_llada.py",
                   "model/configuration_llada.py")
COMMITS = {"eval_llada.py": "guanghanwang/ReMDM-LLaDA 169c9b9198dc1979582900cc6bb888d308bf9304",
           "diffusion.py": "kuleshov-group/remdm f830d659fb98d9b2c79ff71bfa12d578312b688a",
           "model/": "NVlabs/Fast-dLLM a9b81e4 v1/llada/model/ (mirror Q-qiuqiu/Fast-dLLM)"}

MASK, EOS, PAD, VOCAB = 250, 251, 252, 256
_SIZES = dict(vocab_size=VOCAB, embedding_size=VOCAB, d_model=32, n_heads=2, n_kv_heads=2, n_layers=2,
              mlp_hidden_size=64, mlp_ratio=2, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD)
# "plain": the mask row of the head zeroed (the mask id is practically never sampled);
# "eos": also the EOS row scaled so that EOS is often sampled and committed (early returns)
CHECKPOINTS = {"plain": dict(seed=0, shards=1, head_row_scale={MASK: 0.0}, **_SIZES),
               "eos": dict(seed=0, shards=1, head_row_scale={MASK: 0.0, EOS: 2.0}, **_SIZES)}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, type=Path)
    ap.add_argument("--out-dir", type=Path, default=FIXTURE_DIR)
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args()


def extract(path: Path, functions: list[str], methods: dict[str, str], globals_: dict) -> dict:
    """Exec module-level ``functions`` and class methods ``{name: class}`` of ``path`` as they are."""
    tree = ast.parse(path.read_text())
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in functions]
    for name, cls_name in methods.items():
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
        nodes += [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name]
    assert len(nodes) == len(functions) + len(methods), (path, [n.name for n in nodes])
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), globals_)
    return globals_


class CountingModel:
    """The reference model, recording the canvas of every forward pass."""

    def __init__(self, model):
        self.model, self.calls = model, []

    @property
    def device(self):
        return self.model.device

    def __call__(self, x):
        self.calls.append(x.clone())
        return self.model(x)


def expected_masks(gen: int, block: int, r: int, num_block: int, i: int) -> int:
    """Masks in the answer seen by iteration i of block num_block (one token per step, as all cases)."""
    thr, steps = int(block / 8 * 7), block
    if i < thr:
        in_block = block - i
    elif i < thr + steps:
        in_block = block - thr + r
    else:
        in_block = block - thr - (i - thr - steps)
    return (gen // block - num_block - 1) * block + in_block


def main():
    args = parse_args()
    ref_dir, out_dir = reference_and_out_dirs(args, REFERENCE_FILES)
    work = Path(tempfile.mkdtemp(prefix="remdm_fixtures_"))
    sys.dont_write_bytecode = True

    import numpy as np
    import safetensors
    import torch
    import torch.nn.functional as F
    import transformers

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(LLADA_FIXTURE_DIR))
    import make_checkpoint as mc  # noqa: E402

    sys.path.insert(0, str(ref_dir))
    from model.modeling_llada import LLaDAModelLM  # noqa: E402

    ref = extract(ref_dir / "eval_llada.py", ["_sample_categorical"], {"llada_remdm_sample": "LLaDAEvalHarness"},
                  {"torch": torch, "F": F, "np": np})
    paper = extract(ref_dir / "diffusion.py", ["_sample_categorical"], {"_ddpm_caching_update": "Diffusion"},
                    {"torch": torch})

    # ------------------------------------------------------------------ checkpoints
    models, ckpt_meta = {}, {}
    for name, spec in CHECKPOINTS.items():
        d = out_dir / name
        if d.exists():
            shutil.rmtree(d)
        mc.make_llada_checkpoint(d, **spec)
        again = work / name
        mc.make_llada_checkpoint(again, **json.loads(json.dumps(spec)))
        for f in sorted(p.name for p in d.iterdir()):
            assert (d / f).read_bytes() == (again / f).read_bytes(), f"{name}/{f} not reproducible"
        model, info = LLaDAModelLM.from_pretrained(str(d), torch_dtype=torch.float32, output_loading_info=True)
        assert not any(info.values()), (name, info)
        over = {k: v for k, v in spec.items() if k not in ("seed", "shards", "head_row_scale")}
        expected = mc.make_state_dict(mc.build_config(**over), spec["seed"], spec["head_row_scale"])
        got = model.state_dict()
        assert set(got) == set(expected) and all(torch.equal(got[k], v) for k, v in expected.items()), name
        models[name] = model.eval()
        ckpt_meta[name] = {"path": name,
                           "make_llada_checkpoint_kwargs": {**spec, "head_row_scale": {
                               str(k): v for k, v in spec["head_row_scale"].items()}},
                           "state_sha256": mc.state_dict_sha256(expected),
                           "model.safetensors_sha256": sha256_file(d / "model.safetensors")}

    # ------------------------------------------------------------------ llada_remdm_sample cases
    def prompt(seed, n):
        return torch.randint(0, MASK, (1, n), generator=torch.Generator().manual_seed(seed))

    # (checkpoint, prompt seed, prompt length, mask_length, sampling_steps, block_size, remdm_number, seed)
    specs = [("plain", 100, 8, 32, 32, 32, 1, s) for s in (0, 1, 2)]
    specs += [("plain", 101, 6, 32, 32, 32, 2, s) for s in (3, 4)]
    specs += [("plain", 102, 7, 32, 32, 32, 4, 5)]
    specs += [("plain", 103, 8, 64, 64, 32, 1, s) for s in (6, 7)]
    specs += [("plain", 104, 5, 64, 64, 32, 2, 8), ("plain", 105, 8, 32, 32, 16, 1, 9),
              ("plain", 106, 6, 48, 48, 16, 3, 10)]
    # "eos": candidates from which up to 4 of each kind are kept (no early return; early return with
    # the answer so far ending in EOS; early return with EOS inside it)
    specs += [("eos", 200 + s, 6, 32, 32, block, 1 + s % 2, s) for s in range(40) for block in (8, 16)]
    cases, kinds, skipped = [], {}, []
    for ck, pseed, plen, gen, steps, block, r, seed in specs:
        wrapped = CountingModel(models[ck])
        obj = SimpleNamespace(model=wrapped, mask_id=MASK, mask_length=gen, sampling_steps=steps, block_size=block,
                              remdm_number=r, tokenizer=SimpleNamespace(eos_token_id=EOS))
        p = prompt(pseed, plen)
        torch.manual_seed(seed)
        out = ref["llada_remdm_sample"](obj, p.clone())
        torch.manual_seed(seed)
        again = ref["llada_remdm_sample"](SimpleNamespace(**{**vars(obj), "model": models[ck]}), p.clone())
        assert torch.equal(out, again), "not deterministic"
        per_block = 2 * (steps // (gen // block))
        nfe = len(wrapped.calls)
        blocks_run = nfe // per_block
        assert nfe % per_block == 0
        seen = [int((xt[0, plen:] == MASK).sum()) for xt in wrapped.calls]
        if seen != [expected_masks(gen, block, r, c // per_block, c % per_block) for c in range(nfe)]:
            if ck == "plain":
                raise RuntimeError(f"case {ck}/{seed}: a pass saw more masks than expected: the mask id was committed")
            skipped.append([ck, seed, block])
            continue
        gen_ids = out[0, plen:]
        left = int((gen_ids == MASK).sum())
        assert left == gen - blocks_run * block, "masks left outside the unrun blocks"
        early = blocks_run < gen // block
        done = gen_ids[:blocks_run * block].tolist()
        tail_eos = bool(done) and done[-1] == EOS  # dlm's stop_after_eos ends the row at the same block
        kind = "ends_with_eos" if tail_eos else "eos_inside" if early else "complete"
        if ck == "eos":
            if kinds.get(kind, 0) >= 4:
                continue
            kinds[kind] = kinds.get(kind, 0) + 1
        name = f"{ck}_gen{gen}_blk{block}_steps{steps}_r{r}_seed{seed}"
        cases.append({"name": name, "checkpoint": ck, "seed": seed, "prompt": p.tolist(), "mask_length": gen,
                      "sampling_steps": steps, "block_size": block, "remdm_number": r, "mask_id": MASK,
                      "eos_token_id": EOS, "output": out.tolist(), "nfe": nfe, "blocks_run": blocks_run,
                      "early_return": early, "eos_in_answer": int((gen_ids == EOS).sum()),
                      "ends_with_eos": tail_eos})
        print(f"{name:42s} nfe {nfe:3d} blocks {blocks_run} eos {cases[-1]['eos_in_answer']:2d} tail {tail_eos}")
    (out_dir / "cases.json").write_text(dump_cases(cases))

    # ------------------------------------------------------------------ paper update rule on fixed p
    updates = []
    B, L, V = 2, 8, 12
    mask_index = V - 1
    specs_u = [("remdm-cap", 0.5), ("remdm-rescale", 0.8), ("remdm-conf", None)]
    for u, (sampler, eta) in enumerate(specs_u):
        for j, N in ((0, 4), (1, 4), (2, 4), (3, 4), (5, 8)):
            seed = 1000 + 10 * u + j
            g = torch.Generator().manual_seed(seed)
            logits = torch.randn(B, L, V, generator=g, dtype=torch.float64) * 2
            x = torch.randint(0, V - 1, (B, L), generator=g)
            x[torch.rand(B, L, generator=g) < 0.5] = mask_index
            conf = torch.where(x == mask_index, -torch.inf, -torch.rand(B, L, generator=g, dtype=torch.float64))
            z = logits.clone()
            z[..., mask_index] = -torch.inf
            p = torch.softmax(z, dim=-1)
            p_x0 = torch.where((x != mask_index)[..., None], F.one_hot(x, V).to(torch.float64), p)  # subs
            stub = SimpleNamespace(config=SimpleNamespace(noise=SimpleNamespace(type="loglinear"),
                                                          sampling=SimpleNamespace(sampler=sampler, eta=eta,
                                                                                   nucleus_p=1.0)),
                                   noise=lambda t: (t, t), mask_index=mask_index, time_conditioning=False)
            t = torch.full((B, 1), 1 - j / N, dtype=torch.float64)
            torch.manual_seed(seed)
            _, xs, conf_out = paper["_ddpm_caching_update"](stub, x.clone(), t, 1 / N, p_x0=p_x0.clone(),
                                                            conf=conf.clone())
            def enc(c):
                return [[None if v == -float("inf") else v for v in row] for row in c.tolist()]
            updates.append({"sampler": sampler, "eta": eta, "j": j, "N": N, "seed": seed, "mask_index": mask_index,
                            "logits": logits.tolist(), "x": x.tolist(), "conf": enc(conf), "xs": xs.tolist(),
                            "conf_out": enc(conf_out),
                            "remasked": int(((x != mask_index) & (xs == mask_index)).sum()),
                            "unmasked": int(((x == mask_index) & (xs != mask_index)).sum())})
    (out_dir / "paper_updates.json").write_text(dump_cases(updates))

    manifest = {
        "reference": {"commits": COMMITS, "files_sha256": {f: sha256_file(ref_dir / f) for f in REFERENCE_FILES}},
        "checkpoints": ckpt_meta,
        "cases": {"count": len(cases), "early_return": sum(c["early_return"] for c in cases), "eos_kinds": kinds,
                  "skipped_mask_id_committed": skipped,
                  "ends_with_eos": sum(c["ends_with_eos"] for c in cases)},
        "paper_updates": {"count": len(updates), "remasked": sum(u["remasked"] for u in updates),
                          "unmasked": sum(u["unmasked"] for u in updates)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                     "numpy": np.__version__},
        "torch_num_threads": args.threads,
        "command": "/work/refenv/bin/python scripts/derive_remdm_fixtures.py --reference-dir /tmp/remdm_ref",
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(manifest["cases"]), json.dumps(manifest["paper_updates"]))


if __name__ == "__main__":
    main()
