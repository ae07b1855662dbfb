#!/usr/bin/env python
"""Derive parity fixtures for the ``edit`` sampler (tests/fixtures/edit/) from SGLang's JointThreshold.

Run with an environment that has torch, safetensors, numpy and transformers 4.x (the reference
LLaDA modeling file cannot be imported with transformers 5.x)::

    /work/refenv/bin/python scripts/derive_edit_fixtures.py --reference-dir /tmp/edit_ref

``--reference-dir`` must hold, extracted by the user::

    joint_threshold.py       sgl-project/sglang python/sglang/srt/dllm/algorithm/joint_threshold.py (17d5721)
    model/__init__.py, model/modeling_llada.py, model/configuration_llada.py
                             NVlabs/Fast-dLLM v1/llada/model/ (a9b81e4), the LLaDA model the logits come from

This script contains no reference code. SGLang cannot be imported here, so ``joint_threshold.py``
is executed with stand-in modules for its three sglang imports: ``DllmAlgorithm`` (the attributes
the class reads: ``block_size``, ``mask_id``), ``DllmConfig`` (``algorithm_config`` and those two)
and ``ForwardBatch`` (``input_ids``: the flat batch * block_size ids of the current block,
``batch_size``). Each block is then driven as SGLang's ``DllmAlgorithm._run_sync`` (base.py at
17d5721) does: one forward, then up to ``max_steps(block_size)`` times ``step`` (which edits
``input_ids`` in place) followed, unless every request reported done, by another forward. A forward
is the reference LLaDA model on the whole canvas (prompt, decoded blocks, the current block's ids,
masks after it), its float32 logits of the current block flattened to (batch * block_size, V).
Blocks are dlm's: ``[P + k * block, P + (k + 1) * block)``, so the prompt is never inside a block.

A probe measures each step before the reference runs it (penalty, argmax, softmax, thresholds, in
its own code), records margins and exact ties, checks that the reference transferred exactly the
positions those measurements imply and that the model never proposes the mask id; cases with ties
are dropped. Each case runs twice (identical results required).

The checkpoints are those of tests/fixtures/fast (``medium`` / ``sharp``, made by
tests/fixtures/llada/make_checkpoint.py with derive_fast_fixtures.CHECKPOINTS); the script
regenerates them and requires them byte-identical to the files there. Outputs (``--out-dir``,
default tests/fixtures/edit/): cases.json, manifest.json. See tests/fixtures/edit/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from derive_fast_fixtures import CHECKPOINTS, MASK  # noqa: E402  (the checkpoints reused from tests/fixtures/fast)
from derive_llada_fixtures import dump_cases, reference_and_out_dirs, sha256_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "edit"
FAST_FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "fast"
LLADA_FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "llada"
REFERENCE_FILES = ("joint_threshold.py", "model/__init__.py", "model/modeling_llada.py", "model/configuration_llada.py")
SGLANG_COMMIT = "17d57211575786d0abf1683309f9e3b1545b8210"  # joint_threshold.py and algorithm/base.py read at it
FAST_DLLM_COMMIT = "a9b81e4"
SHORT = {"threshold": "thr", "edit_threshold": "ethr", "max_post_edit_steps": "post", "penalty_lambda": "lam"}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, type=Path)
    ap.add_argument("--out-dir", type=Path, default=FIXTURE_DIR)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    return ap.parse_args()


def load_joint_threshold(path: Path):
    """Execute joint_threshold.py with stand-ins for the sglang modules it imports."""

    class DllmAlgorithm:
        def __init__(self, config):
            self.block_size = config.block_size
            self.mask_id = config.mask_id

    class DllmConfig:
        def __init__(self, algorithm_config, block_size, mask_id):
            self.algorithm_config, self.block_size, self.mask_id = algorithm_config, block_size, mask_id

    class ForwardBatch:
        def __init__(self, input_ids, batch_size):
            self.input_ids, self.batch_size = input_ids, batch_size

    stand_ins = {"sglang.srt.dllm.algorithm.base": {"DllmAlgorithm": DllmAlgorithm},
                 "sglang.srt.dllm.config": {"DllmConfig": DllmConfig},
                 "sglang.srt.model_executor.forward_batch_info": {"ForwardBatch": ForwardBatch}}
    for name, attrs in stand_ins.items():
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        for k, v in attrs.items():
            setattr(sys.modules[name], k, v)
    module = types.ModuleType("joint_threshold")
    module.__file__ = str(path)
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    return module.Algorithm, DllmConfig, ForwardBatch


class Probe:
    """Measures one reference step from the same logits (before the reference's in-place penalty)."""

    def __init__(self, torch):
        self.torch = torch
        self.stats = dict(min_argmax_gap=math.inf, min_threshold_margin=math.inf, min_edit_threshold_margin=math.inf,
                          min_forced_pick_gap=math.inf, ties=0)

    def expect(self, algo, ids, logits, states):
        """ids (B, n), logits (B, n, V): the positions the reference should transfer (B, n) bool."""
        torch, st = self.torch, self.stats
        B, n, V = logits.shape
        logits = logits.clone()
        expected = torch.zeros(B, n, dtype=torch.bool)
        for i in range(B):
            if states[i]["finished"]:
                continue
            lg, cur = logits[i], ids[i]
            if algo.penalty_lambda > 0:
                lg[torch.arange(1, n), cur[:-1]] -= algo.penalty_lambda
            top2 = lg.topk(2, dim=-1)
            x = top2.indices[:, 0]
            if bool((x == MASK).any()):
                raise RuntimeError("the model proposes the mask id")
            gap = top2.values[:, 0] - top2.values[:, 1]
            st["ties"] += int((gap == 0).sum())
            p = torch.softmax(lg, dim=-1).gather(-1, x[:, None])[:, 0]
            masked = cur == MASK
            thr, ethr = torch.tensor(algo.threshold, dtype=p.dtype), torch.tensor(algo.edit_threshold, dtype=p.dtype)
            if bool(masked.any()):
                m2t = masked & (p > thr)
                st["min_threshold_margin"] = min(st["min_threshold_margin"], float((p[masked] - thr).abs().min()))
                st["ties"] += int((p[masked] == thr).sum())
                if not bool(m2t.any()):
                    c = p[masked].sort(descending=True).values
                    if len(c) > 1:
                        st["ties"] += int(c[0] == c[1])
                        st["min_forced_pick_gap"] = min(st["min_forced_pick_gap"], float(c[0] - c[1]))
                    m2t[torch.where(masked, p, -torch.inf).argmax()] = True
            else:
                m2t = torch.zeros_like(masked)
                if states[i]["post_edit_steps"] + 1 > algo.max_post_edit_steps:
                    continue
            cand = ~masked & (cur != x)
            if bool(cand.any()):
                margin = float((p[cand] - ethr).abs().min())
                st["min_edit_threshold_margin"] = min(st["min_edit_threshold_margin"], margin)
                st["ties"] += int((p[cand] == ethr).sum())
            expected[i] = m2t | (cand & (p > ethr))
            if bool(expected[i].any()):
                st["min_argmax_gap"] = min(st["min_argmax_gap"], float(gap[expected[i]].min()))
        return expected


def run_case(torch, Algorithm, DllmConfig, ForwardBatch, model, prompt, gen, block, algorithm_config):
    """The reference over every block of [prompt | mask * gen]; returns ids, per-block records, probe."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen), MASK, dtype=torch.long)], dim=1)
    algo = Algorithm(DllmConfig(dict(algorithm_config), block, MASK))
    probe = Probe(torch)
    blocks, edits, fills, steps_total = [], 0, 0, 0
    for s in range(P, P + gen, block):
        e = s + block
        fb = ForwardBatch(x[:, s:e].reshape(-1).clone(), B)
        states = algo.init_step_state(fb)
        forwards = 0

        def forward():
            nonlocal forwards
            forwards += 1
            x[:, s:e] = fb.input_ids.view(B, block)
            with torch.no_grad():
                return model(x).logits[:, s:e].float().reshape(B * block, -1).contiguous()

        logits = forward()
        finish_step = [None] * B
        n_steps = 0
        for _ in range(algo.max_steps(block)):
            before = fb.input_ids.view(B, block).clone()
            expected = probe.expect(algo, before, logits.view(B, block, -1), states)
            was_finished = [st["finished"] for st in states]
            done = algo.step(fb, logits, states)
            n_steps += 1
            after = fb.input_ids.view(B, block)
            changed = after != before
            if not torch.equal(changed, expected):
                raise RuntimeError("the reference transferred other positions than the probe measured")
            edits += int((changed & (before != MASK)).sum())
            fills += int((changed & (before == MASK)).sum())
            for i in range(B):
                if states[i]["finished"] and not was_finished[i]:
                    finish_step[i] = n_steps
            if all(done):
                break
            logits = forward()
        x[:, s:e] = fb.input_ids.view(B, block)
        if None in finish_step:
            raise RuntimeError("a row never finished within max_steps")
        steps_total += max(finish_step)
        blocks.append({"reference_forwards": forwards, "finish_step": finish_step,
                       "post_edit_steps": [st["post_edit_steps"] for st in states]})
    return x, blocks, edits, fills, probe


def main():
    args = parse_args()
    ref_dir, out_dir = reference_and_out_dirs(args, REFERENCE_FILES)
    sys.dont_write_bytecode = True

    import numpy
    import safetensors
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(LLADA_FIXTURE_DIR))
    import make_checkpoint as mc  # noqa: E402

    Algorithm, DllmConfig, ForwardBatch = load_joint_threshold(ref_dir / "joint_threshold.py")
    sys.path.insert(0, str(ref_dir))
    from model.modeling_llada import LLaDAModelLM  # noqa: E402

    models, checkpoints = {}, {}
    work = Path(tempfile.mkdtemp(prefix="edit_fixtures_"))
    for name in ("medium", "sharp"):
        spec = CHECKPOINTS[name]
        again = work / name
        mc.make_llada_checkpoint(again, **spec)
        d = FAST_FIXTURE_DIR / name
        for fn in ("config.json", "model.safetensors"):
            if (d / fn).read_bytes() != (again / fn).read_bytes():
                raise RuntimeError(f"{d / fn} is not what make_checkpoint writes for derive_fast_fixtures.CHECKPOINTS")
        model, info = LLaDAModelLM.from_pretrained(str(d), torch_dtype=torch.float32, output_loading_info=True)
        if any(info.values()):
            raise RuntimeError(f"reference load of {name} reported {info}")
        models[name] = model.eval()
        scale = max(v for k, v in spec["head_row_scale"].items() if int(k) != MASK)
        checkpoints[name] = {"path": f"tests/fixtures/fast/{name}", "head_row_scale": scale,
                             "mask_head_row_scale": spec["head_row_scale"][MASK],
                             "model.safetensors_sha256": sha256_file(d / "model.safetensors"),
                             "config.json_sha256": sha256_file(d / "config.json")}

    def prompts(seed, b, l):
        return torch.randint(0, MASK, (b, l), generator=torch.Generator().manual_seed(seed))

    P = {"p8": prompts(100, 1, 8), "p6x2": prompts(101, 2, 6), "p5": prompts(102, 1, 5), "p10": prompts(103, 1, 10),
         "p7x3": prompts(104, 3, 7)}

    # The grid on "sharp": threshold x edit_threshold x max_post_edit_steps, cycling prompt, lengths and
    # penalty; then a few on "medium" and edge settings.
    specs = []
    shapes = [("p8", 32, 32), ("p6x2", 64, 32), ("p5", 64, 32), ("p10", 32, 32), ("p7x3", 32, 32)]
    lambdas = [0.0, 0.0, 2.0]
    k = 0
    for thr in (0.5, 0.9):
        for ethr in (0.0, 0.5, 0.9):
            for mpes in (0, 4, 16):
                pn, gen, blk = shapes[k % len(shapes)]
                specs.append(("sharp", pn, gen, blk, dict(threshold=thr, edit_threshold=ethr,
                                                          max_post_edit_steps=mpes, penalty_lambda=lambdas[k % 3])))
                k += 1
    specs += [
        ("medium", "p8", 32, 32, dict()),  # SGLang's defaults
        ("medium", "p6x2", 64, 32, dict(threshold=0.9, edit_threshold=0.0, max_post_edit_steps=16)),
        ("medium", "p10", 64, 32, dict(threshold=0.5, edit_threshold=0.5, max_post_edit_steps=4, penalty_lambda=4.0)),
        ("medium", "p5", 32, 32, dict(threshold=0.9, edit_threshold=0.9, max_post_edit_steps=16, penalty_lambda=1.0)),
        ("medium", "p7x3", 64, 32, dict(threshold=0.5, edit_threshold=0.0, max_post_edit_steps=4)),
        ("sharp", "p8", 32, 8, dict(threshold=0.5, edit_threshold=0.5, max_post_edit_steps=4)),
        ("sharp", "p6x2", 32, 16, dict(threshold=0.9, edit_threshold=0.0, max_post_edit_steps=16, penalty_lambda=1.0)),
        ("sharp", "p5", 32, 32, dict(threshold=1.0, edit_threshold=0.9, max_post_edit_steps=4)),  # forced picks only
        ("medium", "p8", 32, 32, dict(threshold=0.5, edit_threshold=1.0, max_post_edit_steps=16)),  # no T2T
    ]

    cases, dropped = [], []
    for ck, pn, gen, blk, cfg in specs:
        prompt = P[pn]
        tag = "_".join(f"{SHORT[key]}{v:g}" for key, v in cfg.items()) or "defaults"
        name = f"{ck}_{pn}_gen{gen}_blk{blk}_{tag}"
        ref = (torch, Algorithm, DllmConfig, ForwardBatch, models[ck])
        out, blocks, edits, fills, probe = run_case(*ref, prompt.clone(), gen, blk, cfg)
        out2, blocks2, *_ = run_case(*ref, prompt.clone(), gen, blk, cfg)
        if not (torch.equal(out, out2) and blocks == blocks2):
            raise RuntimeError(f"{name}: not deterministic")
        margins = {k: (None if v == math.inf else v) for k, v in probe.stats.items()}
        if margins["ties"]:
            dropped.append(name)
            print(f"DROPPED (ties) {name}")
            continue
        B = prompt.shape[0]
        case = {
            "name": name, "checkpoint": ck, "prompt": prompt.tolist(), "gen_length": gen, "block_length": blk,
            "mask_id": MASK, "algorithm_config": cfg,
            "output": out.tolist(),
            "reference_forwards": sum(b["reference_forwards"] for b in blocks),
            "nfe": sum(max(b["finish_step"]) for b in blocks),
            "row_forwards": [sum(b["finish_step"][i] for b in blocks) for i in range(B)],
            "t2t_edits": edits, "m2t_fills": fills,
            "blocks": blocks,
            "margins": margins,
        }
        assert case["reference_forwards"] == case["nfe"] + len(blocks)
        assert fills == B * gen
        cases.append(case)
        print(f"{name:72s} ref fwd {case['reference_forwards']:3d} nfe {case['nfe']:3d} rows {case['row_forwards']} "
              f"edits {edits:4d} gap {margins['min_argmax_gap'] or 0:.3g} "
              f"thr {margins['min_threshold_margin'] or 0:.3g} "
              f"ethr {margins['min_edit_threshold_margin'] or 0:.3g} forced {margins['min_forced_pick_gap'] or 0:.3g}")
    (out_dir / "cases.json").write_text(dump_cases(cases))

    manifest = {
        "reference": {
            "repository": "sgl-project/sglang", "commit": SGLANG_COMMIT,
            "files": ["python/sglang/srt/dllm/algorithm/joint_threshold.py (executed)",
                      "python/sglang/srt/dllm/algorithm/base.py (DllmAlgorithm._run_sync: the block driver, "
                      "reimplemented in this script)"],
            "model": {"repository": "NVlabs/Fast-dLLM (mirror Q-qiuqiu/Fast-dLLM)", "commit": FAST_DLLM_COMMIT,
                      "path": "v1/llada/model/"},
            "files_sha256": {f: sha256_file(ref_dir / f) for f in REFERENCE_FILES},
        },
        "checkpoints": checkpoints,
        "cases": {"count": len(cases), "dropped_for_ties": dropped,
                  "with_t2t_edits": sum(1 for c in cases if c["t2t_edits"]),
                  "t2t_edits_total": sum(c["t2t_edits"] for c in cases),
                  "rows_finished_by_post_edit_budget": sum(
                      1 for c in cases for b in c["blocks"] for pe in b["post_edit_steps"]
                      if pe > c["algorithm_config"].get("max_post_edit_steps", 16)),
                  "smallest_margins": {k: min((c["margins"][k] for c in cases if c["margins"][k] is not None),
                                              default=None)
                                       for k in ("min_argmax_gap", "min_threshold_margin",
                                                 "min_edit_threshold_margin", "min_forced_pick_gap")}},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                     "numpy": numpy.__version__},
        "torch_num_threads": args.threads,
        "command": "/work/refenv/bin/python scripts/derive_edit_fixtures.py --reference-dir /tmp/edit_ref",
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps(manifest["cases"], indent=1))
    print(f"{len(cases)} cases, dropped {dropped}; wrote {out_dir}")


if __name__ == "__main__":
    main()
