#!/usr/bin/env python
"""Derive DSL-LLaDA parity fixtures (tests/fixtures/dsl/) from the reference implementation.

Run with an environment that has torch, safetensors, numpy, tqdm and transformers 4.x (the LLaDA
remote code cannot be loaded by transformers 5.x)::

    OMP_NUM_THREADS=1 /work/refenv/bin/python scripts/derive_dsl_fixtures.py --reference-dir /tmp/dsl_ref

``--reference-dir`` must hold these reference files, extracted by the user in the reference's own
layout (see tests/fixtures/dsl/README.md, "Regenerate")::

    dsl_llada/__init__.py, dsl_llada/core/__init__.py, dsl_llada/eval/__init__.py
    dsl_llada/core/dsl_modules.py, dsl_llada/eval/eval_summarization.py   fengsxy/DSL-LLaDA @ 33f29254
    dsl_modules.py, inference.py                                          fengsxy/DSL-LLaDA @ 914b3e3
    llada/modeling_llada.py, llada/configuration_llada.py                 LLaDA-8B-Instruct remote code

This script contains no reference code. It writes a tiny random LLaDA checkpoint that also carries
the DSL tensors under the released names, loads it with the reference ``load_model`` of
``eval_summarization.py`` (pointed at the checkpoint through ``DSL_LLADA_REGISTRY``, with a stub
tokenizer that maps a text "<ids>1 2 3</ids>" to those ids and records what ``decode`` receives),
and records what the reference ``generate_sde_text`` (and the demo ``inference.sde_generate``)
produce. While a case runs, a forward hook counts the backbone passes and keeps their inputs and
logits, and a ``sys.setprofile`` probe reads the reference function's locals when it returns (the
SNR schedule, the final state y, the noise scale, beta) and the return value of every
``get_xhat`` call; every case is then run again without the probe and must give the same ids.

Outputs (tests/fixtures/dsl/ or ``--out-dir``): tiny/ (checkpoint), cases.json,
expected.safetensors, manifest.json. See tests/fixtures/dsl/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from derive_llada_fixtures import dump_cases, reference_and_out_dirs, sha256_file  # noqa: E402  (the LLaDA fixtures' JSON layout and hashes)

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "dsl"
LLADA_FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "llada"
REFERENCE_FILES = (
    "dsl_llada/__init__.py",
    "dsl_llada/core/__init__.py",
    "dsl_llada/eval/__init__.py",
    "dsl_llada/core/dsl_modules.py",
    "dsl_llada/eval/eval_summarization.py",
    "dsl_modules.py",
    "inference.py",
    "llada/modeling_llada.py",
    "llada/configuration_llada.py",
)
REFERENCE = {
    "repository": "fengsxy/DSL-LLaDA",
    "commit": "33f29254b28eb3466e0cff9d88bee060da31c633",
    "files_at_commit": ["dsl_llada/__init__.py", "dsl_llada/core/__init__.py", "dsl_llada/eval/__init__.py",
                        "dsl_llada/core/dsl_modules.py", "dsl_llada/eval/eval_summarization.py"],
    "root_files_commit": "914b3e39a1059a01ab49e99466adf9af42a8dd52",
    "root_files": ["dsl_modules.py", "inference.py"],
    "llada_remote_code": "rayendito/dlm_steer @ f5cd340a322d268fb533a08077891512a79dbdf6: llada/modeling_llada.py, "
                         "llada/configuration_llada.py (= GSAI-ML/LLaDA-8B-Instruct remote code; same files as "
                         "tests/fixtures/llada)",
}

# ---------------------------------------------------------------------------- the tiny checkpoint
VOCAB = 700          # > 512, so the reference's top-512 truncation drops 188 tokens
MASK, EOS, PAD = 696, 697, 697
PROMPT_ID_MAX = 690  # prompt ids are drawn in [0, 690)
D_MODEL = 64
NOISE_DIM = 16
E_SEED = 42          # E = normalize(randn(V, d, generator=Generator().manual_seed(42))), as the root reference
DSL_SEED = 7         # the other DSL tensors, one generator, draws in the order of make_dsl_tensors
BETA = 1.3
W_NOISE_STD = 0.5
C_STD = 0.2
B_STD = 0.5
SNR_MAX = 100.0
LLADA_SPEC = dict(seed=0, shards=1, head_row_scale={MASK: 0.0}, vocab_size=VOCAB, embedding_size=VOCAB,
                  d_model=D_MODEL, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=128, mlp_ratio=2,
                  mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD)
DSL_KEYS = ("noise_embed.weight", "converter.embed.weight", "converter.beta", "converter.logit_bias",
            "converter.backbone_embedding.weight", "converter.backbone_embedding.bias", "log_snr_max")

# Tensors saved to expected.safetensors as "<case>.<item>". "replay" = every backbone pass's inputs_embeds
# and gen-position logits, every get_xhat input (y, s) and output, and each step's dW.
SAVE_TENSORS = {
    "sde_p6_gen16_nfe8": ("y_final", "x_hat_first", "x_hats", "first_pass.inputs_embeds"),
    "fp32_sde_p6_gen16_nfe8": ("y_final", "x_hat_first", "x_hats", "first_pass.inputs_embeds", "first_pass.logits",
                               "final_logits"),
    "fp32_sde_p7_gen24_nfe16": ("y_final", "x_hat_first", "x_hats"),
    "replay_sde_p5_gen8_nfe8": ("replay",),
    "replay_fp32_sde_p5_gen8_nfe4": ("replay",),
    "replay_ode_p4_gen8_nfe4": ("replay",),
}


def make_dsl_tensors(torch, F, state):
    """The DSL tensors of the fixture checkpoint (fp32), from the LLaDA weights in ``state``.

    E (V, d): rows of torch.randn(V, d, generator=Generator().manual_seed(42)), L2-normalised.
    Then one Generator().manual_seed(7), draws in this order:
      n_W = randn(d_model, V + 1);  n_c = randn(d_model);  n_b = randn(V + 1)
    W = [wte^T | wte[mask]] + 0.5 n_W   (the reference's init plus noise: same scale, not equal)
    c = 0.2 n_c
    b = 0.5 n_b, and b[V] += log V
    beta = 1.3, log_snr_max = log 100, converter.embed.weight = E (a copy).
    """
    E = F.normalize(torch.randn(VOCAB, NOISE_DIM, generator=torch.Generator().manual_seed(E_SEED)), dim=-1)
    g = torch.Generator().manual_seed(DSL_SEED)
    n_w = torch.randn(D_MODEL, VOCAB + 1, generator=g)
    n_c = torch.randn(D_MODEL, generator=g)
    n_b = torch.randn(VOCAB + 1, generator=g)
    wte = state["model.transformer.wte.weight"]
    W = torch.cat([wte.T, wte[MASK].unsqueeze(1)], dim=1) + W_NOISE_STD * n_w
    b = B_STD * n_b
    b[VOCAB] += math.log(VOCAB)
    return {
        "noise_embed.weight": E.contiguous(),
        "converter.embed.weight": E.clone().contiguous(),
        "converter.beta": torch.tensor(BETA, dtype=torch.float32),
        "converter.logit_bias": b.contiguous(),
        "converter.backbone_embedding.weight": W.contiguous(),
        "converter.backbone_embedding.bias": (C_STD * n_c).contiguous(),
        "log_snr_max": torch.tensor(math.log(SNR_MAX), dtype=torch.float32),
    }


def write_checkpoint(torch, F, mc, save_file, out: Path):
    spec = dict(LLADA_SPEC)
    over = {k: v for k, v in spec.items() if k not in ("seed", "shards", "head_row_scale")}
    config = mc.build_config(**over)
    state = mc.make_state_dict(config, spec["seed"], spec["head_row_scale"])
    dsl = make_dsl_tensors(torch, F, state)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "config.json", "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    save_file({**state, **dsl}, str(out / "model.safetensors"), metadata={"format": "pt"})
    return config, state, dsl


# ---------------------------------------------------------------------------- harness pieces
def ids_text(ids):
    return "<ids>" + " ".join(str(int(i)) for i in ids) + "</ids>"


class IdsTokenizer:
    """Stands in for the LLaDA tokenizer: the 'text' is already the id list (the chat template and the
    tokenizer are outside the parity); records the calls' options and what decode() receives."""

    def __init__(self):
        self.calls = []
        self.decoded = None

    def apply_chat_template(self, messages, add_generation_prompt=None, tokenize=None, **kw):
        self.calls.append(("apply_chat_template", len(messages), messages[0]["role"], add_generation_prompt,
                           tokenize, sorted(kw)))
        return messages[-1]["content"]

    def __call__(self, text, add_special_tokens=None, return_tensors=None, **kw):
        import torch
        self.calls.append(("__call__", add_special_tokens, return_tensors, sorted(kw)))
        assert text.startswith("<ids>") and text.endswith("</ids>"), text
        return {"input_ids": torch.tensor([[int(t) for t in text[5:-6].split()]], dtype=torch.long)}

    def decode(self, ids, skip_special_tokens=None, **kw):
        self.calls.append(("decode", skip_special_tokens, sorted(kw)))
        self.decoded = [int(t) for t in ids.tolist()]
        return " ".join(str(t) for t in self.decoded)


class StubAutoTokenizer:
    @staticmethod
    def from_pretrained(*args, **kwargs):
        return IdsTokenizer()


class PassRecorder:
    """Forward hook on the LLaDA model: counts passes and keeps (inputs_embeds, logits) of each."""

    def __init__(self):
        self.passes = []

    def __call__(self, module, args, kwargs, output):
        self.passes.append((kwargs.get("inputs_embeds").detach().clone(), output.logits.detach().clone(),
                            kwargs.get("input_ids").detach().clone(), sorted(kwargs)))


class LocalsProbe:
    """sys.setprofile probe on the reference file: for every get_xhat call its arguments (yy, ss), the
    caller's dW at that moment and the return value; the sampler's locals when it returns."""

    def __init__(self, filename, fn_name):
        self.filename, self.fn_name = filename, fn_name
        self.xhats, self.inputs, self.dws, self.locals = [], [], [], None

    def __call__(self, frame, event, arg):
        if frame.f_code.co_filename != self.filename:
            return
        name = frame.f_code.co_name
        if event == "call" and name == "get_xhat":
            loc = frame.f_locals
            self.inputs.append((loc["yy"].detach().clone(), loc["ss"].detach().clone()))
            self.dws.append(frame.f_back.f_locals["dW"].detach().clone())
        elif event == "return" and name == "get_xhat":
            self.xhats.append(arg.detach().clone())
        elif event == "return" and name == self.fn_name:
            self.locals = dict(frame.f_locals)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, type=Path)
    ap.add_argument("--out-dir", type=Path, default=FIXTURE_DIR)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--check-threads", type=int, default=2,
                    help="rerun every case with this many threads and record whether the ids agree (0: skip)")
    return ap.parse_args()


def main():
    args = parse_args()
    ref_dir, out_dir = reference_and_out_dirs(args, REFERENCE_FILES)
    work = Path(tempfile.mkdtemp(prefix="dsl_fixtures_"))
    # The reference modules create folders next to themselves on import (eval_results/): import a copy.
    ref_copy = work / "ref"
    for f in REFERENCE_FILES:
        (ref_copy / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ref_dir / f, ref_copy / f)
    os.environ["HF_MODULES_CACHE"] = str(work / "hf_modules")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for var in ("DSL_NOISE_DIM", "DSL_BETA_INIT", "DSL_NOISE_INIT", "DSL_SNR_MU", "DSL_SNR_SIGMA", "DSL_SNR_MAX_LN",
                "DSL_ROAR_FRAC", "DSL_SNR_PER_TOKEN", "DSL_RESIDUAL", "DSL_OUTPUT_EMBED", "DSL_BBEMB_INIT",
                "DSL_SNR_MAX", "DSL_FFOUT_LORA_R", "DSL_FREEZE_EMBED", "DSL_FREEZE_CONVERTER"):
        os.environ.pop(var, None)  # the reference reads these; run with its defaults

    sys.dont_write_bytecode = True
    import numpy
    import safetensors
    import torch
    import torch.nn.functional as F
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(LLADA_FIXTURE_DIR))
    import make_checkpoint as mc  # noqa: E402

    # ------------------------------------------------------------------ checkpoint
    tiny_dir = out_dir / "tiny"
    if tiny_dir.exists():
        shutil.rmtree(tiny_dir)
    config, state, dsl = write_checkpoint(torch, F, mc, save_file, tiny_dir)
    again = work / "tiny_again"
    write_checkpoint(torch, F, mc, save_file, again)
    for fn in ("config.json", "model.safetensors"):
        assert (tiny_dir / fn).read_bytes() == (again / fn).read_bytes(), f"{fn} not reproducible"
    ckpt = work / "ckpt"  # the checkpoint plus the remote code, as the reference loads it
    shutil.copytree(tiny_dir, ckpt)
    for f in ("modeling_llada.py", "configuration_llada.py"):
        shutil.copy(ref_copy / "llada" / f, ckpt / f)

    def load_plain(dtype):
        model, info = AutoModelForCausalLM.from_pretrained(str(ckpt), torch_dtype=dtype, trust_remote_code=True,
                                                           output_loading_info=True)
        assert not info["missing_keys"] and not info["mismatched_keys"] and not info["error_msgs"], info
        # transformers 4.x reports "converter.beta" as "converter.bias" (its legacy beta/gamma key renaming)
        assert set(info["unexpected_keys"]) == {k.replace("beta", "bias") for k in DSL_KEYS}, info["unexpected_keys"]
        got = model.state_dict()
        assert set(got) == set(state), set(got) ^ set(state)
        for k, v in state.items():
            assert torch.equal(got[k], v.to(dtype)), k
        return model.eval()

    load_plain(torch.bfloat16)

    # ------------------------------------------------------------------ reference modules
    stub = types.ModuleType("generate")  # eval_summarization does `from generate import generate` (LLaDA's
    stub.generate = None                  # remasking sampler, external/LLaDA/generate.py); unused here
    sys.modules["generate"] = stub
    sys.path.insert(0, str(ref_copy))
    es = importlib.import_module("dsl_llada.eval.eval_summarization")
    core = importlib.import_module("dsl_llada.core.dsl_modules")
    root = importlib.import_module("dsl_modules")
    demo = importlib.import_module("inference")
    assert es.TOP_K == 512 and demo.SDE_TOP_K == 512

    registry = work / "registry.json"
    registry.write_text(json.dumps({"tiny": {"path": str(ckpt), "dsl": True}}))
    os.environ["DSL_LLADA_REGISTRY"] = str(registry)
    saved_auto_tok = transformers.AutoTokenizer
    transformers.AutoTokenizer = StubAutoTokenizer  # load_model does `from transformers import ..., AutoTokenizer`
    try:
        device = torch.device("cpu")
        model_bf16, tokenizer, entry, sde_comp = es.load_model("tiny", device)
    finally:
        transformers.AutoTokenizer = saved_auto_tok
    assert isinstance(tokenizer, IdsTokenizer) and sde_comp is not None
    assert next(model_bf16.parameters()).dtype == torch.bfloat16
    assert sde_comp["beta_train"] == float(dsl["converter.beta"])
    for k, key in (("ne", "noise_embed.weight"), ("lb", "converter.logit_bias"),
                   ("bw", "converter.backbone_embedding.weight"), ("bb", "converter.backbone_embedding.bias")):
        assert sde_comp[k].dtype == torch.float32 and torch.equal(sde_comp[k], dsl[key]), k

    # fp32 backbone variant: same weights in fp32; the reference still rounds h and wte(prompt) to bf16
    # (its .to(torch.bfloat16)); a forward pre-hook casts that bf16 inputs_embeds to fp32 for the model.
    model_fp32 = load_plain(torch.float32)

    def to_fp32(module, a, kw):
        kw = dict(kw)
        kw["inputs_embeds"] = kw["inputs_embeds"].float()
        return a, kw

    model_fp32.register_forward_pre_hook(to_fp32, with_kwargs=True)

    # diagnostic only (no cases): the same weights in float64, to see how sensitive the fp32 cases are
    model_fp64 = load_plain(torch.float64)

    def to_fp64(module, a, kw):
        kw = dict(kw)
        kw["inputs_embeds"] = kw["inputs_embeds"].double()
        return a, kw

    model_fp64.register_forward_pre_hook(to_fp64, with_kwargs=True)
    models = {"bf16": model_bf16, "fp32": model_fp32}
    recorders = {}
    for name, m in models.items():
        recorders[name] = PassRecorder()
        m.register_forward_hook(recorders[name], with_kwargs=True)

    # E equals the root reference's init under torch.manual_seed(42) (attach_dsl_modules, random init)
    m_attach = load_plain(torch.float32)
    root.attach_dsl_modules(m_attach, noise_dim=NOISE_DIM, mask_token_id=MASK)
    assert torch.equal(m_attach.noise_embed.weight.detach(), dsl["noise_embed.weight"]), "E differs from root init"
    w_init = m_attach.converter.backbone_embedding.weight.detach()
    wte = state["model.transformer.wte.weight"]
    assert torch.equal(w_init[:, :VOCAB], wte.T) and torch.equal(w_init[:, VOCAB], wte[MASK])
    del m_attach

    # ------------------------------------------------------------------ cases
    gen = torch.Generator().manual_seed(2024)
    prompts = {n: torch.randint(0, PROMPT_ID_MAX, (n,), generator=gen).tolist() for n in range(3, 13)}

    def run_sde(model, prompt, opts, probe=None):
        """One reference call; returns the recorder slice. opts: nfe, gen_length, seed and the harness
        overrides noise_scale (patches es.adaptive_ns) / beta_train (the sde_comp value)."""
        comp = dict(sde_comp)
        if opts.get("beta_train") is not None:
            comp["beta_train"] = opts["beta_train"]
        saved = es.adaptive_ns
        if opts.get("noise_scale") is not None:
            ns_value = opts["noise_scale"]
            es.adaptive_ns = lambda nfe: ns_value
        tokenizer.calls.clear()
        if probe is not None:
            sys.setprofile(probe)
        try:
            es.generate_sde_text(model, tokenizer, ids_text(prompt), device, comp, nfe=opts["nfe"],
                                 gen_length=opts["gen_length"], seed=opts["seed"])
        finally:
            sys.setprofile(None)
            es.adaptive_ns = saved
        return list(tokenizer.decoded)

    def run_demo(model, prompt, opts, probe=None):
        comp = {"ne": sde_comp["ne"], "lb": sde_comp["lb"], "bw": sde_comp["bw"], "bb": sde_comp["bb"],
                "bv": opts["bv"], "rw": None, "rb": None, "K": sde_comp["K"]}
        tokenizer.calls.clear()
        if probe is not None:
            sys.setprofile(probe)
        try:
            demo.sde_generate(model, tokenizer, comp, ids_text(prompt), gen_length=opts["gen_length"],
                              steps=opts["steps"], noise_scale=opts["noise_scale"], snr_max=opts["snr_max"],
                              device="cpu", seed=opts["seed"], norm_init=opts["norm_init"],
                              sensitive=opts["sensitive"])
        finally:
            sys.setprofile(None)
        return list(tokenizer.decoded)

    def S(p, g, nfe, **kw):  # generate_sde_text options
        return dict(prompt_len=p, gen_length=g, nfe=nfe, seed=kw.pop("seed", 42),
                    noise_scale=kw.pop("noise_scale", None), beta_train=kw.pop("beta_train", None))

    def D(p, g, steps, **kw):  # inference.sde_generate options (its defaults unless given)
        o = dict(prompt_len=p, gen_length=g, steps=steps, noise_scale=0.3, snr_max=50.0, seed=42, norm_init=True,
                 sensitive=True, bv=sde_comp["beta_train"])
        o.update(kw)
        return o

    specs = [
        # generate_sde_text, bf16 backbone exactly as the reference loads it
        ("sde_p3_gen8_nfe2", "sde", "bf16", S(3, 8, 2)),
        ("sde_p4_gen8_nfe3", "sde", "bf16", S(4, 8, 3)),
        ("sde_p5_gen16_nfe4", "sde", "bf16", S(5, 16, 4)),
        ("sde_p6_gen16_nfe8", "sde", "bf16", S(6, 16, 8)),
        ("sde_p7_gen24_nfe16", "sde", "bf16", S(7, 24, 16)),
        ("sde_p8_gen16_nfe32", "sde", "bf16", S(8, 16, 32)),
        ("sde_p9_gen24_nfe64", "sde", "bf16", S(9, 24, 64)),
        ("sde_p12_gen8_nfe64", "sde", "bf16", S(12, 8, 64)),
        ("sde_p3_gen24_nfe6", "sde", "bf16", S(3, 24, 6)),
        ("sde_p10_gen24_nfe8_seed7", "sde", "bf16", S(10, 24, 8, seed=7)),
        ("ode_p11_gen16_nfe8", "sde", "bf16", S(11, 16, 8, noise_scale=0.0)),
        ("ode_p5_gen24_nfe16", "sde", "bf16", S(5, 24, 16, noise_scale=0.0)),
        ("ode_p6_gen8_nfe64", "sde", "bf16", S(6, 8, 64, noise_scale=0.0)),
        ("beta4_p7_gen16_nfe16", "sde", "bf16", S(7, 16, 16, beta_train=2.0)),
        ("beta1_p4_gen24_nfe8", "sde", "bf16", S(4, 24, 8, beta_train=0.5)),
        ("ns0.3_p8_gen16_nfe32", "sde", "bf16", S(8, 16, 32, noise_scale=0.3)),
        ("replay_sde_p5_gen8_nfe8", "sde", "bf16", S(5, 8, 8)),
        ("replay_ode_p4_gen8_nfe4", "sde", "bf16", S(4, 8, 4, noise_scale=0.0)),
        # the same sampler with an fp32 backbone (harness variant, see README)
        ("fp32_sde_p3_gen8_nfe2", "sde", "fp32", S(3, 8, 2)),
        ("fp32_sde_p4_gen8_nfe3", "sde", "fp32", S(4, 8, 3)),
        ("fp32_sde_p6_gen16_nfe8", "sde", "fp32", S(6, 16, 8)),
        ("fp32_sde_p7_gen24_nfe16", "sde", "fp32", S(7, 24, 16)),
        ("fp32_sde_p8_gen16_nfe32", "sde", "fp32", S(8, 16, 32)),
        ("fp32_sde_p9_gen24_nfe64", "sde", "fp32", S(9, 24, 64)),
        ("fp32_sde_p10_gen24_nfe8_seed7", "sde", "fp32", S(10, 24, 8, seed=7)),
        ("fp32_ode_p11_gen16_nfe8", "sde", "fp32", S(11, 16, 8, noise_scale=0.0)),
        ("fp32_ode_p6_gen8_nfe64", "sde", "fp32", S(6, 8, 64, noise_scale=0.0)),
        ("fp32_beta4_p7_gen16_nfe16", "sde", "fp32", S(7, 16, 16, beta_train=2.0)),
        ("replay_fp32_sde_p5_gen8_nfe4", "sde", "fp32", S(5, 8, 4)),
        # inference.py sde_generate (the demo sampler: steps, schedule, init and noise are parameters)
        ("demo_default_p5_gen16_steps16", "demo", "bf16", D(5, 16, 16)),
        ("demo_loglinear_p6_gen16_steps8", "demo", "bf16", D(6, 16, 8, sensitive=False)),
        ("demo_loglinear_randn_p7_gen24_steps8", "demo", "bf16", D(7, 24, 8, sensitive=False, norm_init=False)),
        ("demo_sensitive_randn_snr100_p8_gen16_steps16", "demo", "bf16",
         D(8, 16, 16, norm_init=False, snr_max=100.0, noise_scale=0.05, bv=2.0 * sde_comp["beta_train"])),
        ("fp32_demo_loglinear_ode_p9_gen16_steps8", "demo", "fp32", D(9, 16, 8, sensitive=False, noise_scale=0.0)),
        ("fp32_demo_loglinear_randn_p4_gen8_steps4", "demo", "fp32",
         D(4, 8, 4, sensitive=False, norm_init=False, bv=3.0)),
    ]

    es_file = str(ref_copy / "dsl_llada" / "eval" / "eval_summarization.py")
    demo_file = str(ref_copy / "inference.py")
    cases, expected = [], {}
    schedules = {}
    for name, kind, bk, opts in specs:
        prompt = prompts[opts["prompt_len"]]
        model, rec = models[bk], recorders[bk]
        run = run_sde if kind == "sde" else run_demo
        probe = LocalsProbe(es_file if kind == "sde" else demo_file,
                            "generate_sde_text" if kind == "sde" else "sde_generate")
        rec.passes.clear()
        ids = run(model, prompt, opts, probe)
        passes = list(rec.passes)
        calls = list(tokenizer.calls)
        loc = probe.locals
        assert loc is not None and len(probe.xhats) == len(passes) - 1, (name, len(probe.xhats), len(passes))
        # second run without the probe: same ids and final logits
        rec.passes.clear()
        ids2 = run(model, prompt, opts)
        assert ids2 == ids and len(rec.passes) == len(passes), name
        assert torch.equal(rec.passes[-1][1], passes[-1][1]), name
        same_threads = None
        if args.check_threads:
            torch.set_num_threads(args.check_threads)
            rec.passes.clear()
            same_threads = run(model, prompt, opts) == ids
            torch.set_num_threads(args.threads)

        fp64 = None
        if bk == "fp32":  # rerun with a float64 backbone (the reference still casts its logits to fp32)
            probe64 = LocalsProbe(probe.filename, probe.fn_name)
            ids64 = run(model_fp64, prompt, opts, probe64)
            fp64 = {"same_ids": ids64 == ids, "positions_differing": sum(a != b for a, b in zip(ids, ids64)),
                    "y_final_max_abs_diff": float((probe64.locals["y"] - probe.locals["y"]).abs().max())}

        P = len(prompt)
        L = opts["gen_length"]
        snrs = loc["snrs"]
        y = loc["y"]
        final_logits = (loc["lo"] if kind == "sde" else loc["lo_final"]).float()
        assert final_logits.shape == (1, L, VOCAB)
        assert final_logits.argmax(-1)[0].tolist() == ids
        for emb, _, dummy, kws in passes:
            # the reference passes bf16 embeds; in the fp32 variant the hook sees them after the fp32 cast
            assert emb.shape == (1, P + L, D_MODEL) and emb.dtype == (torch.bfloat16 if bk == "bf16" else torch.float32)
            assert torch.equal(emb.to(torch.bfloat16).float(), emb.float())
            assert dummy.shape == (1, P + L) and int(dummy.abs().sum()) == 0 and kws == ["input_ids", "inputs_embeds"]
        # margins: final argmax gap, and ties at the top-512 boundary of every x_hat pass
        top2 = final_logits[0].topk(2, dim=-1).values
        gaps = (top2[:, 0] - top2[:, 1]).double()
        bnd_ties, bnd_gap = 0, math.inf
        for _, lo, _, _ in passes[:-1]:
            p = F.softmax(lo[:, P:, :].float(), dim=-1)[0]
            srt = p.sort(dim=-1, descending=True).values
            d = (srt[:, 511] - srt[:, 512]).double()
            bnd_ties += int((d == 0).sum())
            nz = d[d > 0]
            if nz.numel():
                bnd_gap = min(bnd_gap, float((nz / srt[:, 511].double()[d > 0]).min()))
        case = {"name": name, "function": "generate_sde_text" if kind == "sde" else "inference.sde_generate",
                "backbone_dtype": bk, "prompt": prompt, "gen_length": L}
        if kind == "sde":
            case.update({"nfe": opts["nfe"], "seed": opts["seed"],
                         "harness_overrides": {k: opts[k] for k in ("noise_scale", "beta_train")
                                               if opts[k] is not None},
                         "steps": int(loc["steps"]), "noise_scale": float(loc["ns"]), "beta_infer": float(loc["bv"])})
        else:
            case.update({k: opts[k] for k in ("steps", "noise_scale", "snr_max", "seed", "norm_init", "sensitive")})
            case["bv"] = float(opts["bv"])
            case["beta_infer"] = float(loc["bv"])
        case.update({
            "output": ids,
            "backbone_passes": len(passes),
            "snr_schedule": [float(v) for v in snrs.tolist()],
            "snr_schedule_dtype": str(snrs.dtype).replace("torch.", ""),
            "margins": {"min_final_argmax_gap": float(gaps.min()), "final_argmax_ties": int((gaps == 0).sum()),
                        "top512_boundary_ties": bnd_ties,
                        "min_top512_boundary_rel_gap": None if bnd_gap == math.inf else bnd_gap},
            "y_max_norm_by_step": [round(float(t.norm(dim=-1).max()), 4)
                                   for t in [yy for yy, _ in probe.inputs[0::2]] + [y]],
            "same_ids_with_threads": {str(args.check_threads): same_threads} if args.check_threads else None,
            "fp64_backbone_check": fp64,
            "tokenizer_calls": [list(c) for c in calls],
        })
        # consistency of the probe: get_xhat is called at (y, s) then (y_euler, s_next) of each step, and
        # the caller's dW is the same for both calls of a step
        assert all(torch.equal(probe.dws[2 * i], probe.dws[2 * i + 1]) for i in range(len(probe.dws) // 2)), name
        assert [float(ss) for _, ss in probe.inputs] == [float(v) for i in range(len(snrs) - 1)
                                                           for v in (snrs[i], snrs[i + 1])], name
        if name in SAVE_TENSORS:
            items = {}
            for item in SAVE_TENSORS[name]:
                if item == "y_final":
                    items[item] = y.detach().clone()
                elif item == "x_hat_first":
                    items[item] = probe.xhats[0]
                elif item == "x_hats":
                    items[item] = torch.stack(probe.xhats)
                elif item == "first_pass.inputs_embeds":
                    items[item] = passes[0][0].to(torch.bfloat16)
                elif item == "first_pass.logits":
                    items[item] = passes[0][1][:, P:, :].float()
                elif item == "final_logits":
                    items[item] = final_logits
                elif item == "replay":
                    lg = torch.stack([lo[:, P:, :] for _, lo, _, _ in passes])
                    if bk == "bf16":
                        assert lg.dtype == torch.bfloat16  # stored losslessly: the reference only reads .float()
                    items["y0"] = probe.inputs[0][0]
                    items["y_final"] = y.detach().clone()
                    items["xhat_inputs.y"] = torch.stack([yy for yy, _ in probe.inputs])
                    items["xhat_inputs.s"] = torch.stack([ss for _, ss in probe.inputs])
                    items["x_hats"] = torch.stack(probe.xhats)
                    items["dW"] = torch.stack(probe.dws[0::2])
                    items["passes.inputs_embeds"] = torch.stack([e.to(torch.bfloat16) for e, _, _, _ in passes])
                    items["passes.logits"] = lg
            for k, v in items.items():
                expected[f"{name}.{k}"] = v.contiguous()
            case["tensors"] = {f"{name}.{k}": [list(v.shape), str(v.dtype).replace("torch.", "")]
                               for k, v in items.items()}
        if kind == "sde":
            schedules.setdefault(opts["nfe"], case["snr_schedule"])
        cases.append(case)
        print(f"{name:46s} passes {len(passes):3d} ns {case['noise_scale']:<6g} beta {case['beta_infer']:.4g} "
              f"gap {case['margins']['min_final_argmax_gap']:.4g} ties {case['margins']['final_argmax_ties']} "
              f"bnd_ties {bnd_ties} threads_ok {same_threads} fp64 {fp64} out {ids[:8]}")

    # ------------------------------------------------------------------ converter parity (core SoftmaxConvertBias)
    m_conv = load_plain(torch.float32)
    torch.manual_seed(0)  # attach draws nn.Embedding / nn.Linear inits from the global RNG; overwritten below
    core.attach_dsl_modules(m_conv, noise_dim=NOISE_DIM, mask_token_id=MASK)
    res = m_conv.load_state_dict({k: dsl[k] for k in DSL_KEYS}, strict=False)
    assert not res.unexpected_keys, res.unexpected_keys
    assert set(res.missing_keys) == set(state), set(res.missing_keys) ^ set(state)
    assert set(m_conv.state_dict()) == set(state) | set(DSL_KEYS), "DSL layout differs from the reference modules"
    conv = m_conv.converter
    assert conv.embed is m_conv.noise_embed
    conv_info = {}
    with torch.no_grad():
        z_a = torch.randn(2, 5, NOISE_DIM, generator=torch.Generator().manual_seed(5)) * 3.0
        ids_b = torch.randint(0, PROMPT_ID_MAX, (2, 5), generator=torch.Generator().manual_seed(6))
        snr_b = torch.tensor([[0.1, 1.0, 3.0, 10.0, 30.0], [0.5, 2.0, 5.0, 20.0, 100.0]])
        torch.manual_seed(3)
        z_b = core.noisy_embedding(m_conv.noise_embed, ids_b, snr_b)
        expected["converter.z_a"] = z_a
        expected["converter.ids_b"] = ids_b
        expected["converter.snr_b"] = snr_b
        expected["converter.z_b"] = z_b
        for tag, beta in (("beta1x", float(dsl["converter.beta"])), ("beta2x", 2.0 * float(dsl["converter.beta"]))):
            conv.beta.data.fill_(beta)
            for zn, z in (("z_a", z_a), ("z_b", z_b)):
                p = conv.get_token_probs(z)
                h = conv(z)
                expected[f"converter.{zn}.{tag}.h"] = h.contiguous()
                expected[f"converter.{zn}.{tag}.p_argmax"] = p.argmax(-1).contiguous()
                if zn == "z_b":
                    expected[f"converter.{zn}.{tag}.p"] = p.contiguous()
                conv_info[f"{zn}.{tag}"] = {"beta": conv.beta.item(), "p_argmax": p.argmax(-1).tolist(),
                                            "p_max": [[round(v, 6) for v in r] for r in p.max(-1).values.tolist()]}
    print(json.dumps(conv_info))
    del m_conv

    # ------------------------------------------------------------------ training SNR draws
    def draws(fn, b, l, seed):
        torch.manual_seed(seed)
        return fn(b, l, "cpu", snr_max=SNR_MAX, snr_max_ln=min(0.4 * SNR_MAX, 40.0))

    seeds = list(range(8))
    one, two = [], None  # more seeds: two with one ROAR row and one with two or more (from the first draw)
    for s in range(8, 1000):
        torch.manual_seed(s)
        r = int((torch.rand(4) < 0.1).sum())
        if r == 1 and len(one) < 2:
            one.append(s)
        if r >= 2 and two is None:
            two = s
        if len(one) == 2 and two is not None:
            break
    seeds += sorted(one + [two])
    snr_info = {"batch": [4, 32], "seeds": seeds, "roar_rows": {}}
    for s in seeds:
        sc = draws(core.sample_mixed_snr, 4, 32, s)
        sr = draws(root.sample_mixed_snr, 4, 32, s)
        expected[f"snr.core.seed{s}"] = sc
        expected[f"snr.root.seed{s}"] = sr
        torch.manual_seed(s)
        is_roar = (torch.rand(4) < 0.1).tolist()
        snr_info["roar_rows"][str(s)] = [i for i, v in enumerate(is_roar) if v]
        # ROAR rows come from the same draws in both copies; the LogNormal rows differ (per row / per token)
        for i, v in enumerate(is_roar):
            if v:
                assert torch.equal(sc[i], sr[i]), (s, i)
    expected["snr.core.b16.seed0"] = draws(core.sample_mixed_snr, 16, 32, 0)
    expected["snr.root.b16.seed0"] = draws(root.sample_mixed_snr, 16, 32, 0)
    # a training step's noising: sample_mixed_snr, then noisy_embedding (eps = randn(B, L, d)), same RNG stream
    train_ids = torch.randint(0, PROMPT_ID_MAX, (4, 32), generator=torch.Generator().manual_seed(11))
    emb = torch.nn.Embedding(VOCAB, NOISE_DIM)
    emb.weight.data.copy_(dsl["noise_embed.weight"])
    for tag, mod in (("core", core), ("root", root)):
        torch.manual_seed(0)
        s = mod.sample_mixed_snr(4, 32, "cpu", snr_max=SNR_MAX, snr_max_ln=40.0)
        z = mod.noisy_embedding(emb, train_ids, s)
        expected[f"train.{tag}.seed0.snr"] = s
        expected[f"train.{tag}.seed0.z"] = z.detach()
        expected[f"train.{tag}.seed0.next_randn"] = torch.randn(3)  # the RNG state after the step
    expected["train.ids"] = train_ids
    expected["E"] = dsl["noise_embed.weight"]
    print(json.dumps(snr_info))

    # ------------------------------------------------------------------ write
    (out_dir / "cases.json").write_text(dump_cases(cases))
    save_file({k: v.contiguous() for k, v in expected.items()}, str(out_dir / "expected.safetensors"),
              metadata={"format": "pt"})
    manifest = {
        "reference": {**REFERENCE, "files_sha256": {f: sha256_file(ref_dir / f) for f in REFERENCE_FILES}},
        "checkpoint": {
            "path": "tiny",
            "make_llada_checkpoint_kwargs": {**{k: v for k, v in LLADA_SPEC.items() if k != "head_row_scale"},
                                             "head_row_scale": {str(MASK): 0.0}},
            "llada_state_sha256": mc.state_dict_sha256(state),
            "dsl_tensors": {"E_seed": E_SEED, "dsl_seed": DSL_SEED, "noise_dim": NOISE_DIM, "beta": BETA,
                            "W_noise_std": W_NOISE_STD, "c_std": C_STD, "b_std": B_STD,
                            "b_last_plus": "log(V)", "log_snr_max": "log(100)"},
            "dsl_state_sha256": mc.state_dict_sha256(dsl),
            "files_sha256": {f: sha256_file(tiny_dir / f) for f in ("config.json", "model.safetensors")},
        },
        "files_sha256": {f: sha256_file(out_dir / f) for f in ("cases.json", "expected.safetensors")},
        "sde_schedules_by_nfe": {str(k): v for k, v in sorted(schedules.items())},
        "converter": conv_info,
        "snr_draws": snr_info,
        "cases": {"count": len(cases),
                  "with_final_argmax_ties": [c["name"] for c in cases if c["margins"]["final_argmax_ties"]],
                  "with_top512_boundary_ties": [c["name"] for c in cases if c["margins"]["top512_boundary_ties"]],
                  "fp32_cases_whose_ids_change_with_a_fp64_backbone": [
                      c["name"] for c in cases
                      if c["fp64_backbone_check"] and not c["fp64_backbone_check"]["same_ids"]],
                  "ids_differ_with_threads": [
                      c["name"] for c in cases
                      if c["same_ids_with_threads"] and not all(c["same_ids_with_threads"].values())]},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                     "numpy": numpy.__version__},
        "torch_num_threads": args.threads,
        "command": ("OMP_NUM_THREADS=1 /work/refenv/bin/python scripts/derive_dsl_fixtures.py "
                    "--reference-dir /tmp/dsl_ref"),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for f in (tiny_dir / "config.json", tiny_dir / "model.safetensors", out_dir / "cases.json",
              out_dir / "expected.safetensors", out_dir / "manifest.json"):
        os.chmod(f, 0o644)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{len(cases)} cases; wrote {out_dir}")


if __name__ == "__main__":
    main()
