"""Autoregressive decoding for causal LMs (``tiny-ar``): one token per forward pass, KV cache.

It runs on the same canvas as the diffusion samplers - ``[prompt | mask * gen_length]``, filled
left to right - so NFE, per-step history and padded batches mean the same thing: NFE is the
number of forward passes (one per generated token; the prompt is prefilled in the first pass)
and each history frame is the canvas after one more token. Rows that emitted a stop token are
filled with EOS; when every row has stopped the loop ends early. ``state.stats["forwards"]`` (per
row) counts the passes a row needed: up to the one that produced its stop token (or gen_length) -
a stopped row still rides along in the batch's later passes, which NFE counts and it does not.

q of each drawn token (``GenerationOutput.token_probs``) is ``softmax(l / T)[token]``, the
distribution the Gumbel-max draw samples; at T = 0 (the argmax, a point mass) it is the softmax at
T = 1, the token's probability under the model - so a causal LM decoded by ``ar`` has q = p and an
introspective acceptance rate of 1 (up to the rounding of the KV cache, see
:func:`dlm.acceptance_rate`). The EOS fill of stopped rows was not drawn: NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.sampling.base import DenoiseState, Sampler
from dlm.sampling.output import token_probability
from dlm.sampling.llada import gumbel_argmax


@dataclass
class AROptions:
    gen_length: int = 128
    temperature: float = 0.0  # 0 = greedy; > 0 = LLaDA's float64 Gumbel-max sample at this temperature
    stop_at_eos: bool = True  # stop a row at its first EOS / end-of-turn token
    mask_id: int | None = None  # canvas placeholder for not-yet-generated positions (history only)


class ARSampler(Sampler):
    name = "ar"
    Options = AROptions
    for_causal_models = True

    def validate(self, model) -> None:
        from dlm.errors import DLMError

        if self.opts.gen_length < 1:
            raise DLMError(f"gen_length must be >= 1, got {self.opts.gen_length}")
        if self.opts.temperature < 0 or self.opts.temperature != self.opts.temperature:
            raise DLMError(f"temperature must be >= 0, got {self.opts.temperature}")

    def total_steps(self) -> int:
        return self.opts.gen_length

    @torch.no_grad()
    def run(self, state: DenoiseState) -> None:
        net, facts = state.model.net, state.model.facts
        P, G = state.prompt_length, self.opts.gen_length
        B = state.x.shape[0]
        am = state.attention_mask if state.attention_mask is not None else torch.ones_like(state.x)  # (B, P + G)
        positions = (am.cumsum(-1) - 1).clamp_min(0)  # (B, P + G): left padding shifts positions
        stops = torch.tensor(facts.stop_ids or (-1,), device=state.x.device)
        eos = facts.eos_ids[0] if facts.eos_ids else None
        done = torch.zeros(B, dtype=torch.bool, device=state.x.device)
        forwards = torch.zeros(B, dtype=torch.long)  # (B,) passes each row needed (its stop token's included)
        cache = kv_cache_kwargs(net)  # {"cache": DynamicCache}: filled in place by every forward
        out = net(input_ids=state.x[:, :P], attention_mask=am[:, :P], position_ids=positions[:, :P], use_cache=True,
                  **cache)
        for i in range(G):
            state.nfe += 1
            forwards += (~done).long().cpu()
            logits = state.check_finite(out.logits[:, -1].float())  # (B, V)
            noise = None
            if self.opts.temperature > 0:
                noise = state.rand_rows(logits.shape[-1], dtype=torch.float64)  # (B, V)
            token = gumbel_argmax(logits, self.opts.temperature, noise)  # (B,)
            if state.keep_token_probs:
                drawn = (~done).nonzero()[:, 0]  # (b,) rows still decoding: their token is a draw
                state.record_token_probs(drawn, P + i, token_probability(logits[drawn], token[drawn],
                                                                          self.opts.temperature))
            if self.opts.stop_at_eos and eos is not None:
                token = torch.where(done, torch.full_like(token, eos), token)
                done |= torch.isin(token, stops)
            state.x[:, P + i] = token
            state.record()
            state.stats["forwards"] = forwards.tolist()
            if i == G - 1:
                break
            if self.opts.stop_at_eos and eos is not None and bool(done.all()):
                state.x[:, P + i + 1:] = eos
                break
            out = net(input_ids=token[:, None], attention_mask=am[:, : P + i + 1], use_cache=True,
                      position_ids=positions[:, P + i: P + i + 1], **cache)


def kv_cache_kwargs(net) -> dict[str, object]:
    """A fresh ``transformers.DynamicCache`` under the keyword ``net.forward`` takes.

    Recent transformers 5.x releases renamed ``past_key_values`` to ``cache`` (the old name warns
    and goes in 5.40); earlier 5.x releases only know ``past_key_values``. Passing the cache object ourselves
    (it is updated in place) also avoids reading the deprecated ``output.past_key_values``.
    """
    import inspect

    from transformers import DynamicCache

    get_base = getattr(net, "get_base_model", None)  # a peft PeftModel passes the keywords on to its base
    params = inspect.signature((get_base() if get_base is not None else net).forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    try:
        cache = DynamicCache(config=net.config)
    except TypeError:  # releases whose DynamicCache takes no config
        cache = DynamicCache()
    return {name: cache}
