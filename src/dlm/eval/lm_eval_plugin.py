"""dlm models in lm-evaluation-harness: ``--model dlm`` (``pip install 'dlm[lm-eval]'``).

The unmodified harness from PyPI has no plugin discovery for models, so the class registers itself
when this module is imported. Two ways in:

    dlm lm-eval run --model dlm --model_args pretrained=tiny-a2d-instruct,steps=16 --tasks TASK ...

    import lm_eval, dlm.eval.lm_eval_plugin
    lm_eval.simple_evaluate(model="dlm", model_args="pretrained=tiny-a2d-instruct", tasks=[...])

``model_args``: ``pretrained`` (directory or shipped name; default the default model), ``device``,
``dtype``, ``sampler`` (default by model kind), ``mc_num`` (Monte Carlo copies for
``loglikelihood``, default 128), ``mc_batch_size`` (copies per forward batch, default 32),
``cfg_scale``, ``seed``, ``batch_size`` (requests per generation batch), ``is_greedy_check``
(default true) and any option of the sampler (``steps``, ``gen_length``, ``block_length``, ...).

* ``generate_until``: the sampler decodes ``gen_length`` tokens (default the request's
  ``max_gen_toks``); the answer ends at the first EOS / end-of-turn, then at the first ``until`` string.
* ``loglikelihood``: diffusion models give LLaDA's Monte Carlo ELBO estimate
  (``dlm.loglikelihood``; a lower bound); causal LMs give the exact log-probability. ``is_greedy``
  is whether greedy decoding reproduces the continuation (low-confidence remasking with one token
  per step for diffusion models, argmax per position for causal LMs).
* ``loglikelihood_rolling``: the same, for the whole text given BOS.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import torch

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - exercised only without the extra
    from dlm.errors import DLMError

    raise DLMError("the lm-evaluation-harness plugin needs lm_eval: pip install 'dlm[lm-eval]'") from e

from dlm.errors import DLMError

PLUGIN_ARGS = {"pretrained", "device", "dtype", "sampler", "mc_num", "mc_batch_size", "cfg_scale", "seed",
               "batch_size", "max_batch_size", "is_greedy_check"}


@register_model("dlm")
class DLMHarnessModel(LM):
    def __init__(self, pretrained: str | None = None, device: str | None = "cpu", dtype: str | None = None,
                 sampler: str | None = None, mc_num: int = 128, mc_batch_size: int = 32, cfg_scale: float = 0.0,
                 seed: int = 0, batch_size: int | str = 8, max_batch_size: int | None = None,
                 is_greedy_check: bool = True, **sampler_options: Any):
        super().__init__()
        import dlm
        from dlm.sampling import default_sampler, sampler_class

        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise DLMError(f"device {device!r} (lm-eval's default) was requested but CUDA is not available; "
                           f"pass --device cpu")
        self.model = dlm.load(pretrained, device=device or "cpu", dtype=dtype)
        if self.model.tokenizer is None:
            raise DLMError(f"{pretrained}: lm-eval needs a model with a tokenizer")
        self.sampler = sampler or default_sampler(self.model)
        names = {f.name for f in dataclasses.fields(sampler_class(self.sampler).Options)}
        unknown = sorted(set(sampler_options) - names)
        if unknown:
            raise DLMError(f"model_args: unknown argument {unknown[0]!r} (plugin: {', '.join(sorted(PLUGIN_ARGS))}; "
                           f"sampler {self.sampler!r}: {', '.join(sorted(names))})")
        self.sampler_options = sampler_options
        self.mc_num, self.mc_batch_size, self.cfg_scale = int(mc_num), int(mc_batch_size), float(cfg_scale)
        if self.mc_num % self.mc_batch_size:
            raise DLMError(f"mc_num ({mc_num}) must be a multiple of mc_batch_size ({mc_batch_size})")
        self.seed = int(seed)
        if str(batch_size).startswith("auto") or max_batch_size is not None:
            raise DLMError("automatic batch sizes are not supported by the dlm model; give --batch_size N")
        self.batch_size = int(batch_size)
        self.is_greedy_check = is_greedy_check if isinstance(is_greedy_check, bool) else str(is_greedy_check).lower() == "true"
        self._device = self.model.device

    # -- tokenisation --------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(self.model.path).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.model.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                        add_generation_prompt=add_generation_prompt)

    def _prefix(self) -> list[int]:
        facts = self.model.facts
        return [facts.bos_id] if facts.bos_id is not None else [facts.stop_ids[0]] if facts.shifted else []

    def _encode(self, text: str) -> list[int]:
        return self.model.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _context_ids(self, context: str) -> list[int]:
        bos = self.model.tokenizer.bos_token
        ids = self._encode(context)
        return ids if bos and context.startswith(bos) else self._prefix() + ids

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """As the harness does: trailing context spaces move to the continuation; the split is
        taken from the joint tokenisation."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        whole = self._encode(context + continuation)
        ctx = self._encode(context)
        return self._context_ids(context), whole[len(ctx):]

    # -- scoring -------------------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, prompt: list[int], answer: list[int]) -> tuple[float, bool]:
        import dlm
        from dlm.diffusion.likelihood import causal_logprob

        if not answer:
            return 0.0, True
        model = self.model
        if model.facts.causal:
            return causal_logprob(model, torch.tensor(prompt), torch.tensor(answer))
        logp = dlm.loglikelihood(model, prompt, answer, mc_num=self.mc_num, batch_size=self.mc_batch_size,
                                 cfg_scale=self.cfg_scale, seed=self.seed)
        greedy = False
        if self.is_greedy_check:
            out = dlm.generate(model, torch.tensor([prompt]), sampler="llada", gen_length=len(answer),
                               steps=len(answer), block_length=len(answer), cfg_scale=self.cfg_scale)
            greedy = out[0, len(prompt):].tolist() == answer
        return logp, greedy

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from tqdm.auto import tqdm

        out = []
        for req in tqdm(requests, desc="dlm loglikelihood", disable=disable_tqdm, file=sys.stderr):
            context, continuation = req.args
            prompt, answer = self._encode_pair(context, continuation)
            if not prompt:
                raise DLMError("empty context and the model has no BOS token to condition on")
            out.append(self._score(prompt, answer))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), out[-1])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from tqdm.auto import tqdm

        out = []
        for req in tqdm(requests, desc="dlm loglikelihood_rolling", disable=disable_tqdm, file=sys.stderr):
            (text,) = req.args
            prefix = self._prefix() or [self.model.facts.stop_ids[0]]
            out.append(self._score(prefix, self._encode(text))[0])
        return out

    # -- generation ----------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm.auto import tqdm

        from dlm.sampling.batching import generate_answers

        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):  # requests with equal generation settings share batches
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        bar = tqdm(total=len(requests), desc="dlm generate_until", disable=disable_tqdm, file=sys.stderr)
        for members in groups.values():
            kwargs = dict(requests[members[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            options = dict(self.sampler_options)
            options.setdefault("gen_length", int(kwargs.pop("max_gen_toks", 256)))
            if float(kwargs.get("temperature", 0.0) or 0.0) > 0 and kwargs.get("do_sample", True):
                options.setdefault("temperature", float(kwargs["temperature"]))
            prompts = {i: self._context_ids(requests[i].args[0]) for i in members}
            members = sorted(members, key=lambda i: len(prompts[i]))
            for start in range(0, len(members), self.batch_size):
                batch = members[start: start + self.batch_size]
                _, answers = generate_answers(self.model, [prompts[i] for i in batch], sampler=self.sampler,
                                              seed=self.seed, **options)
                for i, answer in zip(batch, answers):
                    text = self.model.decode(answer)
                    for stop in until:
                        if stop and stop in text:
                            text = text[: text.index(stop)]
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(batch))
        bar.close()
        return [r if r is not None else "" for r in results]


def run_harness_cli(argv: list[str]) -> int:
    """lm-evaluation-harness' own command line, with ``--model dlm`` registered."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        setup_logging()
        parser = HarnessCLI()
        parser.execute(parser.parse_args())
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    finally:
        sys.argv = saved
    return 0
