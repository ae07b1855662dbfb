"""The ``dlm`` command line: ``dlm generate``, ``dlm info``, ``dlm train``, ``dlm data``.

Errors are one line on stderr (``dlm: error: ...``) with exit status 2; nothing prints a
traceback at the user unless ``DLM_DEBUG=1`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dlm.errors import DLMError, first_line
from dlm.sampling.batching import generate_answers

EXIT_USAGE = 2


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise DLMError(f"--prompt-ids must be integers separated by commas or spaces, got {text!r}") from None


def _parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise DLMError(f"--option expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip().replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.strip().replace("-", "_"), value


def cmd_generate(args: argparse.Namespace) -> int:
    import dlm

    model = dlm.load(args.model, device=args.device, dtype=args.dtype)
    if args.prompt_ids is not None:
        prompts = [_parse_ids(p) for p in args.prompt_ids]
    else:
        chat = None if args.chat == "auto" else args.chat == "on"
        texts = [sys.stdin.read() if p == "-" else p for p in args.prompt]
        prompts = [model.encode_prompt(t, chat=chat) for t in texts]
    options = {k: v for k, v in {
        "gen_length": args.gen_length, "steps": args.steps, "block_length": args.block_length,
        "temperature": args.temperature, "cfg_scale": args.cfg_scale, "remasking": args.remasking,
        "mask_id": args.mask_id,
        "logits_eos_inf": True if args.logits_eos_inf else None,
        "confidence_eos_eot_inf": True if args.confidence_eos_eot_inf else None,
    }.items() if v is not None}
    options.update(dict(_parse_option(o) for o in args.option or []))
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    out, answers = generate_answers(model, prompts, sampler=args.sampler, seed=args.seed, progress=progress,
                                    output_history=args.history, **options)
    results = []
    for row, answer in enumerate(answers):
        text = model.decode(answer) if model.tokenizer is not None else None
        results.append({"prompt_ids": prompts[row], "ids": out.generated[row].tolist(), "answer_ids": answer,
                        "text": text})
    if args.json:
        from dlm.provenance import software_versions

        record = {
            "model": args.model or "default", "sampler": out.sampler, "options": out.options, "seed": args.seed,
            "nfe": out.nfe, "seconds": round(out.seconds, 4), "device": str(model.device), "dtype": str(model.dtype),
            "versions": software_versions(),
            "results": results,
        }
        if args.history:
            record["history"] = out.history[:, :, out.prompt_length:].tolist()
        print(json.dumps(record))
        return 0
    for r in results:
        print(r["text"] if r["text"] is not None else " ".join(map(str, r["answer_ids"])))
    if args.verbose:
        print(f"[{out.sampler}: {out.nfe} forward passes, {out.seconds:.2f} s]", file=sys.stderr)
    return 0


def describe(path: str | None) -> dict:
    """Facts about a checkpoint directory for ``dlm info``."""
    import dlm
    from dlm.models.registry import FAMILIES

    model = dlm.load(path)
    facts = model.facts
    info = {
        "path": str(model.path) + ("" if path else " (the embedded default)"),
        "model_type": facts.model_type,
        "family": FAMILIES[facts.model_type].note,
        "architecture": type(model.net).__name__,
        "parameters": model.num_parameters(),
        "vocab_size": facts.vocab_size,
        "shifted": facts.shifted,
        "causal": facts.causal,
        "mask_id": facts.mask_id, "eos_ids": list(facts.eos_ids), "eot_id": facts.eot_id,
        "bos_id": facts.bos_id, "pad_id": facts.pad_id,
        "tokenizer": type(model.tokenizer).__name__ if model.tokenizer is not None else None,
        "chat_template": bool(getattr(model.tokenizer, "chat_template", None)),
    }
    for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "hidden_size", "num_hidden_layers", "n_embd",
                "n_layer", "max_sequence_length", "max_position_embeddings", "n_positions", "torch_dtype"):
        if key in model.config:
            info[key] = model.config[key]
    if path is not None:
        files = sorted(p for p in Path(path).iterdir() if p.suffix in (".safetensors", ".bin"))
        info["weight_files"] = [f.name for f in files]
        info["weight_bytes"] = sum(f.stat().st_size for f in files)
    return info


def cmd_info(args: argparse.Namespace) -> int:
    info = describe(args.model)
    if args.json:
        print(json.dumps(info))
    else:
        width = max(map(len, info))
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from dlm import __version__
    from dlm.sampling import SAMPLERS

    p = argparse.ArgumentParser(prog="dlm", description="Diffusion language models: generate, inspect, evaluate.")
    p.add_argument("--version", action="version", version=f"dlm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt",
                       description="Denoise an answer for each prompt (repeat --prompt for a batch).")
    g.add_argument("--model", default=None, help="checkpoint directory or shipped model name (default: the embedded default, "
                   "tiny-a2d-instruct)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="prompt text, '-' reads stdin (repeat for a batch)")
    src.add_argument("--prompt-ids", action="append", help="prompt token ids, e.g. '1,2,3' (repeat for a batch)")
    g.add_argument("--sampler", default=None, choices=sorted(SAMPLERS),
                   help="sampler (default: ar for causal LMs, llada for diffusion models)")
    g.add_argument("--gen-length", type=int, help="tokens to generate (default: the model's answer length, else 128)")
    g.add_argument("--steps", type=int, help="denoising steps (default: gen-length)")
    g.add_argument("--block-length", type=int, help="semi-autoregressive block length (default: gen-length)")
    g.add_argument("--temperature", type=float, help="sampling temperature (default 0 = greedy)")
    g.add_argument("--cfg-scale", type=float, help="unsupervised classifier-free guidance scale (default 0)")
    g.add_argument("--remasking", choices=["low_confidence", "random"], help="remasking strategy")
    g.add_argument("--mask-id", type=int, help="mask token id (default: from the checkpoint)")
    g.add_argument("--logits-eos-inf", action="store_true", help="never predict EOS")
    g.add_argument("--confidence-eos-eot-inf", action="store_true", help="give EOS/EoT predictions zero confidence")
    g.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="any other sampler option")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--chat", choices=["auto", "on", "off"], default="auto",
                   help="wrap the prompt in the tokenizer's chat template (auto: when it has one)")
    g.add_argument("--device", default="cpu", help="torch device (default cpu)")
    g.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU)")
    g.add_argument("--json", action="store_true", help="print ids, text, NFE and timing as JSON")
    g.add_argument("--history", action="store_true", help="with --json: include the canvas after every step")
    g.add_argument("--progress", dest="progress", action="store_true", default=None, help="show a progress bar")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    g.add_argument("-v", "--verbose", action="store_true", help="print NFE and time to stderr")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="describe a checkpoint directory")
    i.add_argument("model", nargs="?", default=None, help="checkpoint directory (default: the embedded default)")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)

    from dlm.data.cli import add_parser as add_data
    from dlm.eval.cli import add_parser as add_eval
    from dlm.train.cli import add_parser as add_train

    add_train(sub)
    add_data(sub)
    add_eval(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # everything after it belongs to lm-evaluation-harness' own parser
        from dlm.eval.cli import cmd_lm_eval

        def run(_args):
            return cmd_lm_eval(_args, argv[1:])
        args = None
    else:
        args = build_parser().parse_args(argv)
        run = args.func
    try:
        return run(args)
    except DLMError as e:
        print(f"dlm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dlm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if os.environ.get("DLM_DEBUG"):
            raise
        print(f"dlm: internal error: {first_line(e)} (set DLM_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
