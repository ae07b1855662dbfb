"""A straightforward per-step LLaDA loop, written plainly from the semantics of LLaDA's generate.py.

Used as the baseline of ``bench_generate.py`` and as an independent cross-check in the tests: it
computes full logits and a full softmax over every position at every step, ranks with a Python
loop, and has no early exits or windowing. It supports what the benchmark needs (temperature,
low-confidence/random remasking, blocks, CFG, padding mask), not every option of dlm's sampler.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def naive_generate(model, prompt, attention_mask=None, steps=128, gen_length=128, block_length=128,
                   temperature=0.0, cfg_scale=0.0, remasking="low_confidence", mask_id=None):
    mask_id = model.facts.mask_id if mask_id is None else mask_id
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=torch.long)], dim=1)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(B, gen_length, dtype=attention_mask.dtype)], dim=1)
    is_prompt = x != mask_id
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    for blk in range(num_blocks):
        end = P + (blk + 1) * block_length
        n = (x[:, P + blk * block_length:end] == mask_id).sum(dim=1)
        counts = [[int(n[b]) // per_block + (1 if s < int(n[b]) % per_block else 0) for s in range(per_block)]
                  for b in range(B)]
        for s in range(per_block):
            masked = x == mask_id
            if cfg_scale > 0:
                un = x.clone()
                un[is_prompt] = mask_id
                am = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
                both = model(torch.cat([x, un]), attention_mask=am).logits
                cond, uncond = both.chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = model(x, attention_mask=attention_mask).logits
            if temperature > 0:
                noise = torch.rand(logits.shape, dtype=torch.float64)
                x0 = (logits.double().exp() / (-torch.log(noise)) ** temperature).argmax(-1)
            else:
                x0 = logits.argmax(-1)
            if remasking == "low_confidence":
                conf = F.softmax(logits, dim=-1).gather(-1, x0[..., None])[..., 0]
            else:
                conf = torch.rand(B, x.shape[1])
            conf[:, end:] = -float("inf")
            conf = torch.where(masked, conf, torch.full_like(conf, -float("inf")))
            x0 = torch.where(masked, x0, x)
            for b in range(B):
                if counts[b][s]:
                    idx = torch.topk(conf[b], counts[b][s]).indices
                    x[b, idx] = x0[b, idx]
    return x
