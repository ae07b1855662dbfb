"""``remdm``: ReMDM remasking - committed tokens can be masked again and re-predicted.

``schedule="reference"`` (default) has the semantics of ``llada_remdm_sample`` in
guanghanwang/ReMDM-LLaDA ``eval_llada.py`` (commit 169c9b9), written anew on dlm's loop and checked
token for token (and NFE) against that code on tiny random LLaDA weights (tests/fixtures/remdm):

* semi-autoregressive blocks; ``steps / num_blocks`` schedule steps per block plus ``remdm_steps``
  (default: the same number) remasking steps, so NFE = ``steps + num_blocks * remdm_steps``;
* every step samples ``x0`` from ``p = softmax(float64 logits / T)`` with the reference's
  ``argmax(p / (1e-10 - log(u + 1e-10)))`` (u ~ U(0, 1) float64 over the whole (B, L, V) canvas,
  as LLaDA's sampler draws it; T = 1 is the reference, T = 0 takes the argmax and no noise) and
  ranks masked positions of the blocks so far by ``p[x0]`` (T = 0: the softmax at T = 1);
* outside the remasking window a step commits LLaDA's transfer schedule (the top-k confidences);
  a per-block cache keeps each committed token's confidence at commit time;
* the window opens once ``floor(7 * block_length / 8)`` tokens of the block are committed (the
  reference's iteration ``int(block_size / 8 * 7)``); each window step first remasks the
  ``remdm_number`` tokens of the block with the lowest cached confidence, then commits
  ``remdm_number`` (the top confidences, remasked ones included);
* the reference returns after any block once the canvas holds an EOS (later blocks stay masked);
  ``eos_policy="stop_after_eos"`` stops at the same block when the answer so far ends in EOS
  (filling the rest with EOS), and otherwise decodes on (same tokens up to that block).

The reference counts its window in iterations (``2 * steps`` per block, window ``[7/8 block,
7/8 block + steps)``), which is consistent only with one token per step (``gen_length == steps``,
the setting of all its scripts); there dlm equals it. With more tokens per step the reference
fills the block before its window and then selects -inf positions (even prompt tokens) into its
cache and can remask them; dlm instead opens the window where the schedule reaches 7/8 of the
block, never remasks prompt, padding or earlier blocks, and refuses ``remdm_number`` above the
tokens committed when the window opens. A sampled mask id keeps its rank, but where it is committed
the best other token is (the reference would commit the mask, leaving the position masked).

``schedule`` "cap" / "rescale" / "conf": the per-token stochastic remasking of the ReMDM paper
(Wang et al. 2025, kuleshov-group/remdm ``diffusion.py`` ``_ddpm_caching_update``, samplers
``remdm-cap`` / ``remdm-rescale`` / ``remdm-conf``), run as ancestral steps over each block with the
linear schedule ``alpha_t = j / N`` -> ``alpha_s = (j + 1) / N`` at step j of N (no eps and no extra
noise-removal pass, so the block is complete after N = steps per block passes): a visible token is
remasked with probability sigma, a masked one unmasked from ``p`` with probability
``(alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t)``; ``sigma_max = min(1, (1 - alpha_s) / alpha_t)``,
cap ``sigma = min(eta, (1 - alpha_s) / alpha_t)``, rescale ``eta * sigma_max``, conf
``softmax_l(-psi) * sigma_max`` over the block's visible tokens, psi = p of the token when it was
unmasked (float64 here; the paper's code keeps it in bfloat16). NFE = steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.errors import DLMError
from dlm.sampling.base import Block, DenoiseState, Sampler, check_temperature, default_to_gen_length
from dlm.sampling.llada import block_schedule, check_blocks, check_steps, transfer_schedule
from dlm.sampling.output import token_probability
from dlm.sampling.revision import count_changes

SCHEDULES = ("reference", "cap", "rescale", "conf")


@dataclass
class ReMDMOptions:
    gen_length: int = 128
    steps: int | None = None  # schedule steps in all (default gen_length); "reference" adds remdm_steps per block
    block_length: int | None = None  # default: gen_length (one block)
    temperature: float = 1.0  # 1 = the reference; 0 = argmax
    schedule: str = "reference"  # "reference" | "cap" | "rescale" | "conf"
    remdm_number: int | None = None  # "reference": tokens remasked per window step (default 1)
    remdm_steps: int | None = None  # "reference": window steps per block (default steps per block)
    eta: float | None = None  # "cap" / "rescale": the paper's eta in [0, 1]
    mask_id: int | None = None  # default: the model's mask token
    eos_policy: str = "none"  # "stop_after_eos" / "grow": stop once every row's answer has ended


def gumbel_norm_argmax(p: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """ReMDM's ``_sample_categorical``: argmax(p / (1e-10 - log(u + 1e-10))), (..., V) float64 -> (...)."""
    return (p / (1e-10 - (noise + 1e-10).log())).argmax(dim=-1)


def paper_sigma(schedule: str, eta: float | None, alpha_s: float, alpha_t: float,
                psi: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """(B, n) remasking probability of each position (psi: (B, n) -confidence, -inf where none)."""
    ratio = (1 - alpha_s) / alpha_t if alpha_t > 0 else None
    sigma_max = min(1.0, ratio) if ratio is not None else 1.0
    if schedule == "cap":
        value = min(eta, ratio) if ratio is not None else eta
    elif schedule == "rescale":
        value = eta * sigma_max
    else:  # conf: softmax over positions of the stored -confidence, zero at masked positions
        return psi.softmax(dim=-1).masked_fill(masked, 0.0) * sigma_max
    return torch.full(psi.shape, value, dtype=torch.float64, device=psi.device)


def paper_update(x: torch.Tensor, p: torch.Tensor, sigma: torch.Tensor, alpha_s: float, alpha_t: float,
                 mask_id: int, noise: torch.Tensor) -> torch.Tensor:
    """One ancestral step of ``_ddpm_caching_update``: x (B, n), p (B, n, V) float64 with p[..., mask] = 0,
    sigma (B, n), noise (B, n, V) -> new x (B, n). Visible tokens carry over (the subs parameterization)."""
    visible = x != mask_id  # (B, n)
    keep = torch.zeros_like(p).scatter_(-1, torch.where(visible, x, 0)[..., None], 1.0) * (1 - sigma[..., None])
    keep[..., mask_id] = sigma
    fill = p * ((alpha_s - (1 - sigma[..., None]) * alpha_t) / (1 - alpha_t))
    fill[..., mask_id] = (1 - alpha_s - sigma * alpha_t) / (1 - alpha_t)
    return gumbel_norm_argmax(torch.where(visible[..., None], keep, fill), noise)


def paper_psi_update(psi: torch.Tensor, x: torch.Tensor, new: torch.Tensor, p: torch.Tensor, mask_id: int) -> None:
    """"conf" bookkeeping in place: psi (B, n) = -p[token] where a token was unmasked, -inf where remasked."""
    unmasked = (x == mask_id) & (new != mask_id)
    psi[unmasked] = -p.gather(-1, new[..., None])[..., 0][unmasked]
    psi[(x != mask_id) & (new == mask_id)] = -torch.inf


class ReMDMSampler(Sampler):
    name = "remdm"
    Options = ReMDMOptions
    revises = True

    def __init__(self, options: ReMDMOptions):
        default_to_gen_length(options, "steps", "block_length")
        super().__init__(options)

    @classmethod
    def options_for_nfe(cls, nfe: int, options: dict) -> dict:
        """NFE = steps (paper schedules) or 2 * steps ("reference" with the default remdm_steps)."""
        if options.get("schedule", "reference") != "reference":
            return {"steps": nfe}
        if options.get("remdm_steps") is not None:
            raise DLMError("with remdm_steps set the NFE is steps + blocks * remdm_steps; give steps, not --nfe")
        if nfe % 2:
            raise DLMError(f"schedule 'reference' spends 2 passes per schedule step; NFE {nfe} is odd")
        return {"steps": nfe // 2}

    def validate(self, model) -> None:
        o = self.opts
        check_blocks(o)
        check_steps(o)
        if o.temperature < 0:
            raise DLMError(f"temperature must be >= 0, got {o.temperature}")
        check_temperature(o.temperature)
        if o.schedule not in SCHEDULES:
            raise DLMError(f"schedule must be one of {', '.join(SCHEDULES)}, got {o.schedule!r}")
        self.validate_eos_policy(model)
        self.per_block = o.steps // (o.gen_length // o.block_length)
        if o.schedule != "reference":
            for key in ("remdm_number", "remdm_steps"):
                if getattr(o, key) is not None:
                    raise DLMError(f"{key} belongs to schedule 'reference', not {o.schedule!r}")
            if o.schedule == "conf" and o.eta is not None:
                raise DLMError("schedule 'conf' has no eta (sigma = softmax(-confidence) * sigma_max)")
            if o.schedule != "conf" and (o.eta is None or not 0.0 <= o.eta <= 1.0):
                raise DLMError(f"schedule {o.schedule!r} needs eta in [0, 1], got {o.eta}")
            self.window = self.remdm_steps = 0
            return
        if o.eta is not None:
            raise DLMError("eta belongs to the paper schedules (cap, rescale), not 'reference'")
        r = 1 if o.remdm_number is None else o.remdm_number
        self.remdm_steps = self.per_block if o.remdm_steps is None else o.remdm_steps
        if r < 1:
            raise DLMError(f"remdm_number must be >= 1, got {r}")
        if self.remdm_steps < 0:
            raise DLMError(f"remdm_steps must be >= 0, got {self.remdm_steps}")
        # the window opens after the first schedule step by which 7/8 of a block is committed
        committed_after = [0] + transfer_schedule(torch.tensor([o.block_length]), self.per_block)[0].cumsum(0).tolist()
        self.window = next(j for j, c in enumerate(committed_after) if c >= 7 * o.block_length // 8)
        committed = committed_after[self.window]
        if self.remdm_steps and r > committed:
            raise DLMError(f"remdm_number ({r}) is more than the {committed} tokens of a block committed when "
                           f"remasking starts (7/8 of block_length {o.block_length}); lower it or enlarge the block")
        self.remdm_number = r

    def total_steps(self) -> int:
        return self.opts.steps + self.remdm_steps * (self.opts.gen_length // self.opts.block_length)

    # -- hooks -------------------------------------------------------------------------------
    def start_block(self, state: DenoiseState, block: Block) -> None:
        self._schedule = block_schedule(state, block, self.opts)  # (B, steps per block)
        # (B, L) confidence of each token of the block at commit time (reference: +inf where none;
        # paper "conf": the stored -confidence, -inf where none)
        fill = torch.inf if self.opts.schedule == "reference" else -torch.inf
        self._cache = torch.full(state.x.shape, fill, dtype=torch.float64, device=state.x.device)

    def block_done(self, state: DenoiseState, block: Block) -> bool:
        return block.steps_taken == self.per_block + self.remdm_steps

    def in_window(self, j: int) -> bool:
        return self.window <= j < self.window + self.remdm_steps

    def logits_from(self, state: DenoiseState, block: Block) -> int:
        if self.opts.schedule != "reference":
            return block.start
        return state.first_masked(block.end, default=block.start)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """p = softmax(float64 logits / T) (..., V); one-hot argmax at T = 0."""
        t = self.opts.temperature
        if t == 0:
            return torch.zeros_like(logits, dtype=torch.float64).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        z = logits.to(torch.float64)
        return torch.softmax(z if t == 1.0 else z / t, dim=-1)

    def step(self, state: DenoiseState, block: Block, logits: torch.Tensor) -> None:
        if self.opts.schedule == "reference":
            self.reference_step(state, block, logits)
        else:
            self.paper_step(state, block, logits)

    def reference_step(self, state: DenoiseState, block: Block, logits: torch.Tensor) -> None:
        o, x, j = self.opts, state.x, block.steps_taken
        B, L = x.shape
        lo = state.visible - logits.shape[1]  # logits: (B, hi - lo, V) for canvas positions lo..hi-1
        p = self.probs(logits)  # (B, hi - lo, V)
        if o.temperature > 0:
            scores = p / (1e-10 - (state.rand_canvas(logits.shape[-1], dtype=torch.float64, start=lo) + 1e-10).log())
        else:
            scores = logits
        x0 = scores.argmax(dim=-1)  # (B, hi - lo)
        if o.temperature == 0:
            p = torch.softmax(logits.to(torch.float64), dim=-1)
        x0_p = p.gather(-1, x0[..., None])[..., 0]  # (B, hi - lo) float64
        if bool((x0 == state.mask_id).any()):  # a sampled mask id keeps its rank but commits the best other token
            scores = scores.clone()
            scores[..., state.mask_id] = -torch.inf
            x0 = torch.where(x0 == state.mask_id, scores.argmax(dim=-1), x0)
        # rank over the full row as the reference does (ties break the same way); -inf past the block
        confidence = torch.full((B, L), -torch.inf, dtype=torch.float64, device=x.device)
        confidence[:, lo:block.end] = x0_p[:, :block.end - lo]
        confidence = confidence.masked_fill(~state.mask_index, -torch.inf)
        window = self.in_window(j)
        counts = ([self.remdm_number] * B if window else
                  self._schedule[:, j if j < self.window else j - self.remdm_steps].tolist())
        for row, k in enumerate(counts):
            if k == 0 or state.ended[row]:
                continue
            idx = torch.topk(confidence[row], k=k).indices  # (k,)
            x[row, idx] = x0[row, idx - lo]
            self._cache[row, idx] = confidence[row, idx]
            if state.keep_token_probs:
                state.record_token_probs(row, idx, token_probability(logits[row, idx - lo], x0[row, idx - lo],
                                                                     o.temperature))
        if self.in_window(j + 1):  # the next step opens with a remask (the reference's iteration start)
            before = x.clone()
            for row in range(B):
                if not state.ended[row]:
                    idx = torch.topk(self._cache[row], k=self.remdm_number, largest=False).indices
                    self._cache[row, idx] = torch.inf
                    x[row, idx] = state.mask_id
            count_changes(state, before, x)

    def paper_step(self, state: DenoiseState, block: Block, logits: torch.Tensor) -> None:
        o, x = self.opts, state.x
        a, b = block.start, block.end
        lo = state.visible - logits.shape[1]
        z = logits[:, a - lo:b - lo].clone()  # (B, n, V)
        z[..., state.mask_id] = -torch.inf  # the subs parameterization: the mask is never predicted
        p = self.probs(z)  # (B, n, V) float64
        N, j = self.per_block, block.steps_taken
        alpha_t, alpha_s = j / N, (j + 1) / N
        before = x.clone()
        cur = x[:, a:b]  # (B, n)
        masked = cur == state.mask_id
        psi = self._cache[:, a:b]  # (B, n)
        sigma = paper_sigma(o.schedule, o.eta, alpha_s, alpha_t, psi, masked)
        noise = state.rand_positions(a, b, p.shape[-1], dtype=torch.float64)  # (B, n, V)
        new = paper_update(cur, p, sigma, alpha_s, alpha_t, state.mask_id, noise)
        for row in range(x.shape[0]):
            if state.ended[row]:  # eos_policy filled the row: nothing of it changes again
                new[row] = cur[row]
        unmasked = masked & (new != state.mask_id)  # (B, n)
        paper_psi_update(psi, cur, new, p if o.temperature > 0 else torch.softmax(z.to(torch.float64), dim=-1),
                         state.mask_id)
        x[:, a:b] = new
        count_changes(state, before, x)
        if state.keep_token_probs and bool(unmasked.any()):
            rows, cols = unmasked.nonzero(as_tuple=True)
            state.record_token_probs(rows, cols + a, token_probability(z[rows, cols], new[rows, cols], o.temperature))
