"""The ``dlm`` command line: ``dlm generate``, ``dlm info``, ``dlm check``, ``dlm train``, ``dlm data``.

Errors are one line on stderr (``dlm: error: ...``) with exit status 2; nothing prints a
traceback at the user unless ``DLM_DEBUG=1`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from dlm.cli_options import sampler_option_values, with_flag_options
from dlm.errors import DLMError, first_line
from dlm.models.default import DEFAULT_MODEL
from dlm.prompt_input import parse_ids, read_prompts
from dlm.sampling.batching import generate_answers

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``dlm generate: error: ... (see dlm generate --help)``,
    exit 2, instead of the usage block; subcommands inherit it (``parser_class``)."""

    def error(self, message: str, prog: str | None = None):
        prog = prog or self.prog
        self.exit(EXIT_USAGE, f"{prog}: error: {' '.join(message.split())} (see {prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and not hasattr(namespace, "_unknown_in"):  # the innermost (sub)command that got them
            namespace._unknown_in = self.prog
        return namespace, extras

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        prog = vars(namespace).pop("_unknown_in", None)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}", prog)
        return namespace


# the arguments of dlm.generate() that dlm generate has a flag for (-o cannot set them)
GENERATE_FLAGS = {"sampler": "--sampler", "seed": "--seed (and --seed-per-prompt)", "return_dict": "--json",
                  "output_history": "--json --history", "progress": "--progress / --no-progress"}
# sampler options that have their own flag
OPTION_FLAGS = ("gen_length", "steps", "block_length", "temperature", "cfg_scale", "remasking", "mask_id",
                "logits_eos_inf", "confidence_eos_eot_inf")


def cmd_generate(args: argparse.Namespace) -> int:
    import dlm

    if args.history and not args.json:
        raise DLMError("--history needs --json")
    options = with_flag_options(sampler_option_values(args.option, "generate", GENERATE_FLAGS),
                                {name: getattr(args, name) for name in OPTION_FLAGS})
    if args.prompt_ids is not None:  # (id, text) per prompt, read before the model loads
        entries, prompts = [(None, None) for _ in args.prompt_ids], [parse_ids(p) for p in args.prompt_ids]
    else:
        entries = read_prompts(args)
    model = dlm.load(args.model, device=args.device, dtype=args.dtype)
    if args.prompt_ids is None:
        chat = None if args.chat == "auto" else args.chat == "on"
        prompts = [model.encode_prompt(text, chat=chat) for _, text in entries]
    seeds = [args.seed + i for i in range(len(prompts))] if args.seed_per_prompt else None
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    out, answers = generate_answers(model, prompts, sampler=args.sampler, seed=seeds or args.seed,
                                    progress=progress, output_history=args.history, **options)
    results = []
    for row, ((pid, text), answer) in enumerate(zip(entries, answers)):
        result = {"index": row, **({"id": pid} if pid is not None else {}), "prompt": text,
                  "prompt_ids": prompts[row], "ids": out.generated[row].tolist(), "answer_ids": answer,
                  "text": model.decode(answer) if model.tokenizer is not None else None}
        if seeds:
            result["seed"] = seeds[row]
        results.append(result)
    if args.json:
        from dlm.provenance import software_versions

        record = {
            "model": args.model or "default", "sampler": out.sampler, "options": out.options, "seed": args.seed,
            "seed_per_prompt": args.seed_per_prompt,
            "nfe": out.nfe, "seconds": round(out.seconds, 4), "device": str(model.device), "dtype": str(model.dtype),
            "versions": software_versions(),
            "results": results,
        }
        if out.stats:  # what the sampler reports beyond NFE (isd: tokens_per_forward, acceptance_rate, ...)
            record["stats"] = out.stats
        if args.history:
            record["history"] = out.history[:, :, out.prompt_length:].tolist()
        print(json.dumps(record))
    elif args.jsonl:
        for r in results:
            line = {k: r[k] for k in ("index", "id", "prompt", "prompt_ids", "text", "answer_ids") if k in r}
            print(json.dumps({**line, "nfe": out.nfe, "sampler": out.sampler, "seed": r.get("seed", args.seed),
                              "seed_per_prompt": args.seed_per_prompt}, ensure_ascii=False))
    else:
        for r in results:
            if r["text"] is None:
                print(" ".join(map(str, r["answer_ids"])))
            else:  # several answers: one JSON string each, so an answer's newlines stay unambiguous
                print(r["text"] if len(results) == 1 else json.dumps(r["text"], ensure_ascii=False))
    if args.verbose:
        print(f"[{out.sampler}: {out.nfe} forward passes, {out.seconds:.2f} s]", file=sys.stderr)
    return 0


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "BF16": "bfloat16", "F16": "float16",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
                       "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def stored_dtype(files: list[Path], config: dict) -> str | None:
    """The dtype(s) the weights are stored in: the first safetensors file's header, else config.json's
    ``torch_dtype`` / ``dtype`` field."""
    first = next((f for f in files if f.suffix == ".safetensors"), None)
    if first is not None:
        from safetensors import safe_open

        try:
            with safe_open(str(first), "pt") as f:
                kinds = {f.get_slice(name).get_dtype() for name in f.keys()}
        except Exception as e:  # noqa: BLE001 - a corrupt file would already have failed to load
            raise DLMError(f"{first}: cannot read the safetensors header ({first_line(e)})") from None
        return ", ".join(sorted(_SAFETENSORS_DTYPES.get(k, k) for k in kinds)) or None
    declared = config.get("torch_dtype") or config.get("dtype")
    return f"{declared} (config.json)" if declared else None


def describe(path: str | None) -> dict:
    """Facts about a checkpoint for ``dlm info``: a directory, a shipped model's name or a hub id
    in the local Hugging Face cache (``None``: the embedded default)."""
    import dlm
    from dlm.models.registry import FAMILIES
    from dlm.sampling import default_sampler, model_generation_defaults, sampler_class, sampler_options

    model = dlm.load(path)
    facts = model.facts
    info = {
        "path": str(model.path) + ("" if path else " (the embedded default)"),
        "model_type": facts.model_type,
        "family": ("introspective DLM (I-DLM; decoded with the isd sampler)" if facts.introspective
                   else "causal LM (decoded with the ar sampler)" if facts.causal else FAMILIES[facts.model_type].note),
        "architecture": type(model.net).__name__,
        "parameters": model.num_parameters(),
        "vocab_size": facts.vocab_size,
        "shifted": facts.shifted,
        "causal": facts.causal,
        "mask_id": facts.mask_id, "eos_ids": list(facts.eos_ids), "eot_id": facts.eot_id,
        "bos_id": facts.bos_id, "pad_id": facts.pad_id,
        "max_length": facts.max_length,  # config.json max_position_embeddings / max_sequence_length / n_positions
        "trained_length": facts.trained_length,  # config.json dlm_training.seq_len
        "tokenizer": type(model.tokenizer).__name__ if model.tokenizer is not None else None,
        "chat_template": bool(getattr(model.tokenizer, "chat_template", None)),
    }
    for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "hidden_size", "num_hidden_layers", "n_embd",
                "n_layer", "max_sequence_length", "max_position_embeddings", "n_positions", "torch_dtype"):
        if key in model.config:
            info[key] = model.config[key]
    sampler = default_sampler(model)
    info["generation_defaults"] = {"sampler": sampler, **sampler_options(sampler),
                                   **model_generation_defaults(model, sampler_class(sampler))}
    files = sorted(p for p in Path(model.path).iterdir() if p.suffix in (".safetensors", ".bin"))
    info["weight_files"] = [f.name for f in files]
    info["weight_bytes"] = sum(f.stat().st_size for f in files)
    info["stored_dtype"] = stored_dtype(files, model.config)
    info["loaded_dtype"] = str(model.dtype).removeprefix("torch.")
    adapter = Path(model.path) / "dlm_adapter.json"
    if adapter.is_file():  # a LoRA adapter: name its base
        info["adapter_of"] = json.loads(adapter.read_text()).get("base")
    if isinstance(model.config.get("dlm_base"), dict):  # a base converted from a package
        base = model.config["dlm_base"]
        info["converted_from"] = f"{base.get('package')} {base.get('version')}: {base.get('file')} ({base.get('license')})"
    return info


def cmd_info(args: argparse.Namespace) -> int:
    info = describe(args.model)
    if args.json:
        print(json.dumps(info))
    else:
        width = max(map(len, info))
        for k, v in info.items():
            if isinstance(v, dict):
                v = " ".join(f"{name}={value}" for name, value in v.items())
            print(f"{k:<{width}}  {v}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import dlm
    from dlm.check import as_json, failed, run_checks, table

    model = dlm.load(args.model, device=args.device, dtype=args.dtype)
    results = run_checks(model, seed=args.seed)
    print(json.dumps(as_json(model, results, args.seed)) if args.json else table(results))
    return 1 if failed(results) else 0


def build_parser() -> argparse.ArgumentParser:
    from dlm import __version__
    from dlm.sampling import SAMPLERS

    p = OneLineParser(prog="dlm", description="Diffusion language models: generate, inspect, evaluate.")
    p.add_argument("--version", action="version", version=f"dlm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    g = sub.add_parser("generate", help="generate text from a prompt",
                       description="Denoise an answer for each prompt (repeat --prompt for a batch, or give "
                                   "--prompts-file). All prompts run as one batch.",
                       epilog="Output: the answer text for one prompt; for several prompts one JSON string per "
                              "line (so answers with newlines stay unambiguous); token ids separated by spaces "
                              "for models without a tokenizer. --jsonl prints one JSON object per prompt; --json "
                              "one record for the whole run.")
    g.add_argument("--model", default=None, help="checkpoint directory or shipped model name (default: the embedded default, "
                   f"{DEFAULT_MODEL})")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="prompt text, '-' reads stdin (repeat for a batch)")
    src.add_argument("--prompt-ids", action="append", help="prompt token ids, e.g. '1,2,3' (repeat for a batch)")
    src.add_argument("--prompts-file", metavar="FILE",
                     help="one prompt per line (blank lines skipped); a .jsonl file has one object per line "
                          "with \"prompt\" and optionally \"id\"; '-' reads plain text from stdin")
    g.add_argument("--sampler", default=None, choices=sorted(SAMPLERS),
                   help="sampler (default: isd for introspective models, ar for other causal LMs, llada for diffusion models)")
    g.add_argument("--gen-length", type=int, help="tokens to generate (default: the model's answer length, else 128)")
    g.add_argument("--steps", type=int, help="denoising steps (default: gen-length)")
    g.add_argument("--block-length", type=int, help="semi-autoregressive block length (default: gen-length)")
    g.add_argument("--temperature", type=float, help="sampling temperature (default 0 = greedy)")
    g.add_argument("--cfg-scale", type=float, help="unsupervised classifier-free guidance scale (default 0)")
    g.add_argument("--remasking", choices=["low_confidence", "random"], help="remasking strategy")
    g.add_argument("--mask-id", type=int, help="mask token id (default: from the checkpoint)")
    g.add_argument("--logits-eos-inf", action="store_true", help="never predict EOS")
    g.add_argument("--confidence-eos-eot-inf", action="store_true", help="give EOS/EoT predictions zero confidence")
    g.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="any other sampler option; Hugging Face names: max_new_tokens (= gen_length), "
                        "do_sample=false (= temperature 0)")
    g.add_argument("--seed", type=int, default=0,
                   help="random seed (default 0): one generator for the whole batch, as LLaDA's generate.py, "
                        "so a prompt's sample depends on its batch")
    g.add_argument("--seed-per-prompt", action="store_true",
                   help="give prompt i its own generator seeded N + i (N = --seed): its sample no longer "
                        "depends on the other prompts of the batch")
    g.add_argument("--chat", choices=["auto", "on", "off"], default="auto",
                   help="wrap the prompt in the tokenizer's chat template (auto: when it has one)")
    g.add_argument("--device", default="cpu", help="torch device (default cpu)")
    g.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU)")
    out = g.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print ids, text, NFE and timing as one JSON record")
    out.add_argument("--jsonl", action="store_true",
                     help="print one JSON object per prompt and line: index, id, prompt, text, answer_ids, nfe, seed")
    g.add_argument("--history", action="store_true", help="with --json: include the canvas after every step")
    g.add_argument("--progress", dest="progress", action="store_true", default=None, help="show a progress bar")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    g.add_argument("-v", "--verbose", action="store_true", help="print NFE and time to stderr")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="describe a checkpoint (facts, lengths, dtypes, generation defaults)")
    i.add_argument("model", nargs="?", default=None,
                   help="checkpoint directory, shipped model name (e.g. tiny-ar) or a hub id in the local "
                        f"Hugging Face cache (default: the embedded default, {DEFAULT_MODEL})")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)

    c = sub.add_parser("check", help="self-test a checkpoint: masked-token accuracy, shift, special ids, padding",
                       description="Run a dozen built-in sentences through the model and check it: top-1 "
                                   "accuracy and NLL at 15/50/100% masking (next-token for causal LMs), the "
                                   "shifted/unshifted reading, mask and EOS ids, chat template, padded == "
                                   "unpadded logits. Prints check | result | value | threshold/notes.",
                       epilog="Exit status: 0 when no check fails (warnings allowed), 1 when the model fails a "
                              "check, 2 on bad input (a model that cannot be loaded, a bad flag).")
    c.add_argument("model", nargs="?", default=None,
                   help="checkpoint directory, shipped model name or hub id in the local Hugging Face cache "
                        "(default: the embedded default)")
    c.add_argument("--json", action="store_true", help="print one JSON record instead of the table")
    c.add_argument("--seed", type=int, default=0, help="seed of the masks (default 0)")
    c.add_argument("--device", default="cpu", help="torch device (default cpu)")
    c.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU)")
    c.set_defaults(func=cmd_check)

    from dlm.bench.cli import add_parser as add_bench
    from dlm.data.cli import add_parser as add_data
    from dlm.eval.cli import add_parser as add_eval
    from dlm.repair_cli import add_parser as add_repair
    from dlm.server.cli import add_parser as add_serve
    from dlm.train.cli import add_parser as add_train

    add_train(sub)
    add_data(sub)
    add_eval(sub)
    add_bench(sub)
    add_repair(sub)
    add_serve(sub)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings reach the user as one line (``dlm: warning: ...``), without the source line."""
    print(f"dlm: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # everything after it belongs to lm-evaluation-harness' own parser
        from dlm.eval.cli import cmd_lm_eval

        def run(_args):
            return cmd_lm_eval(_args, argv[1:])
        args = None
    else:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, --version, or a usage error already printed as one line
            return 0 if e.code is None else e.code if isinstance(e.code, int) else EXIT_USAGE
        run = args.func
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return run(args)
    except DLMError as e:
        print(f"dlm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dlm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`dlm generate ... | head`): stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except Exception as e:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if os.environ.get("DLM_DEBUG"):
            raise
        print(f"dlm: internal error: {first_line(e)} (set DLM_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
