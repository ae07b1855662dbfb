"""The claim, measured: tiny-a2d (AR -> diffusion adaptation) against tiny-mdm (diffusion from
scratch, same tokens) and tiny-ar (greedy AR decoding), on held-out Debian text.

    .venv/bin/python benchmarks/compare_family.py [--limit 200] [--nfe 8,16,32,64] [--threads 2]

1. Held-out likelihood on the test split (packed [BOS] + 255-token blocks): the masked-diffusion
   ELBO bound per token for tiny-a2d / tiny-mdm (LLaDA's stratified MC estimator, ``--mc`` copies
   per block) and the exact NLL for tiny-ar, as perplexities.
2. Summarisation of a seeded sample of the test pairs whose prompt fits the instruct models'
   fine-tuning length (<= 224 tokens; longer pairs were skipped in SFT too) by the
   instruction-tuned versions: ROUGE-1/2/L (rouge-score, stemmer, F x 100) for the diffusion models with LLaDA
   low-confidence remasking (T = 0, one 32-token block, steps = NFE) and for tiny-ar greedy, with
   the wall time of each. The answer block is 32 tokens, so NFE 64 spends two passes per token.

Writes benchmarks/results/family.json (numbers, settings, seed, versions, hardware) and
family_samples.jsonl (every prediction), and prints a Markdown table. The work splits over
processes with ``--only ppl|rouge`` and ``--runs``, each with its own ``--out``; ``--merge`` joins
the parts (docs/model-family.md gives the exact commands used for the shipped numbers).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dlm  # noqa: E402
from dlm.data.debian import load_split  # noqa: E402
from dlm.eval.perplexity import causal_nll_per_token, diffusion_nll_per_token, perplexity  # noqa: E402
from dlm.eval.rouge import rouge  # noqa: E402
from dlm.provenance import cpu_model, software_versions  # noqa: E402
from dlm.sampling.batching import generate_answers  # noqa: E402
from dlm.train.data import pack_documents, pretraining_text, summary_prompt  # noqa: E402


def test_blocks(tokenizer, rows: list[dict], seq_len: int, n_blocks: int) -> torch.Tensor:
    """Test documents packed as in pretraining into (n, seq_len) blocks, BOS first."""
    blocks = pack_documents(tokenizer, [pretraining_text(r) for r in rows], seq_len - 1)[0][:n_blocks]
    return torch.cat([torch.full((len(blocks), 1), tokenizer.bos_token_id), blocks], dim=1)


def summarise(model, rows: list[dict], batch_size: int, **options) -> tuple[list[str], float, float]:
    """Predictions (in ``rows`` order), wall seconds, mean NFE per batch."""
    prompts = [model.encode_prompt(summary_prompt(r["description"])) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    preds: list[str] = [""] * len(rows)
    seconds, nfes = 0.0, []
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        t0 = time.perf_counter()
        out, answers = generate_answers(model, [prompts[i] for i in idx], seed=0, **options)
        seconds += time.perf_counter() - t0
        nfes.append(out.nfe)
        for i, answer in zip(idx, answers):
            preds[i] = model.decode(answer).strip()
    return preds, seconds, sum(nfes) / len(nfes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=str(ROOT / "src" / "dlm" / "pretrained"))
    ap.add_argument("--data", default=str(ROOT / "data" / "debian"))
    ap.add_argument("--limit", type=int, default=200, help="test pairs for ROUGE (seeded sample)")
    ap.add_argument("--nfe", default="8,16,32,64")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--ppl-blocks", type=int, default=200)
    ap.add_argument("--mc", type=int, default=8, help="masked copies per block for the ELBO")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "family.json"))
    ap.add_argument("--only", choices=["all", "ppl", "rouge"], default="all",
                    help="run one part (to split the work over processes; see --merge)")
    ap.add_argument("--runs", default="tiny-ar-instruct,tiny-a2d-instruct,tiny-mdm-instruct",
                    help="instruction-tuned models to summarise with")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="combine result files of partial runs into --out")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, Path(args.out))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = [int(x) for x in args.nfe.split(",")]
    models = Path(args.models)
    test = load_split(args.data, "test")
    # The instruct models were fine-tuned on prompts of at most seq_len - answer block = 224 tokens
    # (longer pairs were skipped); evaluate on the test pairs that fit the same way.
    encoder = dlm.load(models / "tiny-a2d-instruct")  # all six models share the tokenizer
    fits = [r for r in test if len(encoder.encode_prompt(summary_prompt(r["description"]))) <= 224]
    rows = random.Random(args.seed).sample(fits, min(args.limit, len(fits)))
    refs = [r["synopsis"] for r in rows]
    result = {"settings": vars(args) | {"test_pairs_total": len(test), "test_pairs_fitting": len(fits),
                                        "max_prompt_tokens": 224, "gen_length": 32},
              "versions": software_versions(),
              "hardware": {"cpu": cpu_model(), "torch_threads": torch.get_num_threads()},
              "perplexity": {}, "rouge": []}
    samples = []

    print("## held-out likelihood", file=sys.stderr)
    for name in ("tiny-ar", "tiny-a2d", "tiny-mdm") if args.only in ("all", "ppl") else ():
        model = dlm.load(models / name)
        blocks = test_blocks(model.tokenizer, test, 256, args.ppl_blocks)
        t0 = time.perf_counter()
        if model.facts.causal:
            nll = causal_nll_per_token(model, blocks)
            kind = "exact NLL"
        else:
            nll = diffusion_nll_per_token(model, blocks, mc=args.mc, seed=args.seed, progress=True)
            kind = f"ELBO bound, {args.mc} MC copies/block"
        result["perplexity"][name] = {"nll_per_token": nll, "perplexity": perplexity(nll), "kind": kind,
                                      "blocks": len(blocks), "tokens": int(blocks[:, 1:].numel()),
                                      "seconds": time.perf_counter() - t0,
                                      "training_tokens": _training_tokens(models, name)}
        print(name, result["perplexity"][name], file=sys.stderr)

    print("## summarisation", file=sys.stderr)
    selected = args.runs.split(",") if args.only in ("all", "rouge") else []
    runs = [(m, "ar", None) if "-ar" in m else (m, "llada", n) for m in selected
            for n in ([None] if "-ar" in m else budgets)]
    loaded: dict[str, object] = {}
    for name, sampler, nfe in runs:
        if name not in loaded:
            loaded[name] = dlm.load(models / name)
        model = loaded[name]
        options = dict(gen_length=32) if sampler == "ar" else dict(gen_length=32, steps=nfe, block_length=32)
        preds, seconds, mean_nfe = summarise(model, rows, args.batch_size, sampler=sampler, **options)
        scores = rouge(preds, refs)
        entry = {"model": name, "sampler": sampler, "nfe": mean_nfe, "options": options, **scores,
                 "seconds": seconds, "seconds_per_example": seconds / len(rows),
                 "empty": sum(not p for p in preds) / len(preds),
                 "mean_words": sum(len(p.split()) for p in preds) / len(preds)}
        result["rouge"].append(entry)
        samples += [{"model": name, "nfe": mean_nfe, "package": r["package"], "reference": r["synopsis"],
                     "prediction": p} for r, p in zip(rows, preds)]
        print(json.dumps(entry), file=sys.stderr)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    with open(out.with_name(out.stem + "_samples.jsonl"), "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    print(markdown(result))


def merge(paths: list[str], out: Path) -> None:
    """One result file (and one samples file) from partial runs; settings must agree."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    relevant = {"ppl": ("ppl_blocks", "mc"), "rouge": ("limit", "nfe", "batch_size", "gen_length", "test_pairs_fitting",
                                                    "max_prompt_tokens")}
    shared = ("seed", "threads", "test_pairs_total")
    settings: dict = {}
    for p, part in zip(paths, parts):
        only = part["settings"].get("only", "all")
        keys = shared + (relevant["ppl"] + relevant["rouge"] if only == "all" else relevant[only])
        for k in keys:
            if settings.setdefault(k, part["settings"].get(k)) != part["settings"].get(k):
                raise SystemExit(f"{p}: {k} = {part['settings'].get(k)!r}, another part has {settings[k]!r}")
    result = {"settings": settings | {"merged_from": [Path(p).name for p in paths]}, "versions": parts[0]["versions"],
              "hardware": parts[0]["hardware"], "perplexity": {}, "rouge": []}
    for part in parts:
        result["perplexity"].update(part["perplexity"])
        result["rouge"] += part["rouge"]
    order = ["tiny-ar-instruct", "tiny-a2d-instruct", "tiny-mdm-instruct"]
    result["rouge"].sort(key=lambda e: (order.index(e["model"]) if e["model"] in order else 9, e["nfe"]))
    out.write_text(json.dumps(result, indent=1) + "\n")
    with open(out.with_name(out.stem + "_samples.jsonl"), "w") as f:
        for p in paths:
            f.write(Path(p).with_name(Path(p).stem + "_samples.jsonl").read_text())
    print(markdown(result))


def _training_tokens(models: Path, name: str) -> int:
    """Tokens of this model's training plus those of the model it started from (recursively)."""
    training = json.loads((models / name / "config.json").read_text()).get("dlm_training", {})
    init = training.get("init")
    parent = 0
    if init:
        path = Path(init) if Path(init).is_absolute() else ROOT / init
        parent = _training_tokens(path.parent, path.name) if (path / "config.json").exists() else 0
    return training.get("tokens", 0) + parent


def markdown(result: dict) -> str:
    lines = ["| model | held-out perplexity | kind | training tokens |", "|---|---:|---|---:|"]
    for name, p in result["perplexity"].items():
        lines.append(f"| {name} | {p['perplexity']:.2f} | {p['kind']} | {p['training_tokens']:,} |")
    lines += ["", "| model | decoding | NFE | ROUGE-1 | ROUGE-2 | ROUGE-L | words | empty | wall s | s/example |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in result["rouge"]:
        dec = "AR greedy" if e["sampler"] == "ar" else "LLaDA low-confidence"
        lines.append(f"| {e['model']} | {dec} | {e['nfe']:.1f} | {e['rouge1']:.2f} | {e['rouge2']:.2f} | "
                     f"{e['rougeL']:.2f} | {e['mean_words']:.1f} | {e['empty']:.0%} | {e['seconds']:.1f} | "
                     f"{e['seconds_per_example']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
