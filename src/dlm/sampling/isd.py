"""``isd``: introspective strided decoding (I-DLM, arXiv 2604.11035) for causal models.

Semantics of ``IDLMBlockN`` in thuEcstasy/I-DLM (``inference/sglang/.../idlm_blockN.py``), written
anew. Every forward gives each row ``2N - 1`` input slots (N = ``stride``) after its KV cache of
committed tokens. Slot ``i`` predicts the token in slot ``i + 1`` (causal attention, logit shift);
a mask slot predicts the token one past its own position, so mask slots draft ahead:

* prefill: the prompt; its last logits give the first token ``t0`` (emitted now, as the ``ar``
  sampler's first pass emits its first token) - the reference emits it with the next round;
* cold round ``[h, M x (2N-2)]`` (``h`` = ``t0`` or a correction, already emitted): slot 0 gives the
  clean token, slots ``1..N-1`` the ``N-1`` drafts (slots ``N..`` unused, as in the reference);
  emit the clean token, commit ``h``;
* verify round ``[pending, s_0..s_{N-2}, M x (N-1)]``: slot ``i`` gives ``p`` for ``s_i``, checked
  left to right (T = 0: accept iff ``s_i`` is the argmax; T > 0: with probability
  ``min(1, p/q)``). First rejection at ``i``: emit ``s_<i`` and the correction ``c`` (argmax;
  T > 0: drawn from ``norm(max(0, p - q))``, ``p`` when that is empty), commit ``pending, s_<i``,
  next round cold with ``h = c``. All accepted: slot ``N-1`` gives the new clean token, slots
  ``N..2N-2`` new drafts; emit ``s_*`` and the clean token (N tokens), commit ``pending, s_*``.

At T = 0 every emitted token is the argmax given the tokens before it, so the output equals greedy
AR decoding (the ``ar`` sampler) token for token. ``mode`` only matters at T > 0:

* ``"reference"`` (the default): as the reference code and the published I-DLM numbers - clean
  tokens drawn from ``softmax(l / T)`` with top-k / top-p, drafts are the argmax of the draft
  logits but scored with ``q = softmax(draft / T)`` over the full vocabulary, ``p = softmax(l / T)``.
  It is the default because dlm's samplers reproduce their reference implementation (acceptance
  rates and tokens per forward comparable with the paper's); it is *not* exactly the AR
  distribution (an argmax draft does not come from ``q``, and top-k/top-p are not in ``p``).
* ``"exact"``: drafts drawn from ``q`` = the top-k/top-p/temperature distribution of the draft
  logits and ``p`` = the same filtered distribution of the verify logits, so speculative-sampling
  acceptance makes every token distributed exactly as AR sampling with that filter (with
  ``top_k=0, top_p=1``: as the ``ar`` sampler at the same temperature).

KV cache: the model's ``transformers`` cache holds committed tokens only. Rows commit different
numbers of slots, so after every forward the cache is re-packed with one gather per layer: each
row keeps its committed K/V right-aligned (left padding hidden by a 2-D attention mask), exactly
the layout of a left-padded AR batch, and finished rows are dropped from it (when all rows commit
the same number of slots and none finished, a crop). Positions are explicit per row.

NFE counts forward passes actually run, the prefill included (as the ``ar`` sampler, whose
prefill is its first pass): 1 + rounds; a row that ends (EOS, gen_length) leaves the batch.
``state.stats`` (``GenerationOutput.stats``) has ``tokens_per_forward`` (generated tokens up to
the stop token, per forward a row took part in, prefill included, over the batch; the reference's
per-request figure leaves the prefill out: ``tokens / (forwards - 1)``), per-row ``tokens`` and
``forwards``, ``accepted`` / ``proposed`` drafts (``acceptance_rate``: accepted / proposed = mean
accepted prefix / (N - 1)), ``cold_rounds`` and ``verify_rounds``. One ``state.record()`` per
forward; the canvas fills left to right (rows that stopped are filled with EOS, as ``ar`` does).

``GenerationOutput.token_probs`` (q of each emitted token, for :func:`dlm.acceptance_rate`), at
T > 0 ``softmax(l / T)`` of the slot that decided the token: an accepted draft keeps the q of its
draft slot (the ratio the acceptance test weighs), clean tokens, ``t0`` and corrections record p of
their verify slot. Top-k / top-p are left out of both (the reference's own acceptance test, mode
``reference``, uses the full softmax too). At T = 0 acceptance means "the draft is the argmax of p",
so every emitted token is p's argmax and records p at T = 1: greedy ``isd`` on a causal model has
q = p, as ``ar`` does. The EOS fill after a stop is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dlm.errors import DLMError
from dlm.sampling.autoregressive import kv_cache_kwargs
from dlm.sampling.base import DenoiseState, Sampler
from dlm.sampling.output import token_probability

MODES = ("reference", "exact")


@dataclass
class ISDOptions:
    gen_length: int = 128
    stride: int = 4  # N: at most N tokens per forward, 2N - 1 input slots (N - 1 drafts)
    temperature: float = 0.0  # 0 = greedy (output = greedy AR decoding)
    top_k: int = 50  # T > 0: keep the k most likely tokens (0 = all); the reference's YAML value
    top_p: float = 0.95  # T > 0: nucleus mass in (0, 1] (1 = all); the reference's YAML value
    mode: str = "reference"  # "reference" (as I-DLM's code) or "exact" (AR distribution); see the module doc
    stop_at_eos: bool = True  # stop a row at its first EOS / end-of-turn token (rest filled with EOS)
    mask_id: int | None = None  # the draft slots' input token (default: the model's mask token)


def filtered_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """(..., V) logits / T with -inf outside the top-k, then outside the top-p nucleus."""
    z = logits / temperature
    if 0 < top_k < z.shape[-1]:
        z = z.masked_fill(z < z.topk(top_k, dim=-1).values[..., -1:], -math.inf)
    if top_p < 1.0:
        ordered, order = z.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        ordered = ordered.masked_fill(probs.cumsum(-1) - probs >= top_p, -math.inf)  # mass before it >= top_p
        z = torch.full_like(z, -math.inf).scatter(-1, order, ordered)
    return z


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF samples: probs (R, V) (unnormalised, >= 0), u (R,) in [0, 1) -> (R,) ids."""
    cdf = probs.cumsum(-1)  # (R, V)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)  # (R, 1): first cdf > u * total
    return pick[:, 0].clamp_max(probs.shape[-1] - 1)


class ISDSampler(Sampler):
    keep_probs = False  # set per run from DenoiseState.keep_token_probs
    name = "isd"
    Options = ISDOptions
    for_causal_models = True

    def validate(self, model) -> None:
        o = self.opts
        if o.gen_length < 1:
            raise DLMError(f"gen_length must be >= 1, got {o.gen_length}")
        if o.stride < 2:
            raise DLMError(f"stride must be >= 2 (N tokens per forward, 2N - 1 slots), got {o.stride}")
        if not o.temperature >= 0:
            raise DLMError(f"temperature must be >= 0, got {o.temperature}")
        if o.top_k < 0:
            raise DLMError(f"top_k must be >= 0 (0 = no top-k filter), got {o.top_k}")
        if not 0 < o.top_p <= 1:
            raise DLMError(f"top_p must be in (0, 1] (1 = no nucleus filter), got {o.top_p}")
        if o.mode not in MODES:
            raise DLMError(f"mode must be one of {', '.join(MODES)}, got {o.mode!r}")
        o.mask_id = model.facts.resolve_mask_id(o.mask_id)  # no mask token: one clear error
        gated = getattr(model.net, "dlm_gate_mask_id", None)  # an R-ISD adapter acts where the input is its mask
        if gated is not None and o.mask_id != gated:
            raise DLMError(f"this model's LoRA adapter acts only at its mask token {gated} (R-ISD); mask_id={o.mask_id} "
                           "would leave the draft slots without it")

    # -- distributions (T > 0) ------------------------------------------------------------------
    def sample_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., V) float64 probabilities clean tokens are drawn from (temperature, top-k, top-p)."""
        o = self.opts
        return filtered_logits(logits.double(), o.temperature, o.top_k, o.top_p).softmax(-1)

    def target_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """p of the acceptance test: the reference uses the full softmax(l / T), exact the sampled one."""
        if self.opts.mode == "exact":
            return self.sample_probs(logits)
        return (logits.double() / self.opts.temperature).softmax(-1)

    def drafts(self, logits: torch.Tensor, u: torch.Tensor | None):
        """Drafts (K,) and their q (K, V) (None at T = 0) from the K draft slots' logits (K, V)."""
        if self.opts.temperature == 0:
            return logits.argmax(-1), None
        if self.opts.mode == "exact":
            q = self.sample_probs(logits)
            return draw(q, u), q
        return logits.argmax(-1), (logits.double() / self.opts.temperature).softmax(-1)

    def pick(self, logits: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """Clean tokens (R,) from logits (R, V): argmax at T = 0, else a draw of sample_probs."""
        return logits.argmax(-1) if self.opts.temperature == 0 else draw(self.sample_probs(logits), u)

    def prob(self, logits: torch.Tensor, token: int) -> float:
        """softmax(l / T)[token] of one slot's logits (V,) (T = 0: at T = 1), for token_probs."""
        if not self.keep_probs:  # not asked for (output_token_probs=False): skip the softmax
            return math.nan
        return float(token_probability(logits, torch.tensor(token, device=logits.device), self.opts.temperature))

    def round(self, logits: torch.Tensor, u: torch.Tensor | None, specs: list[int], q: torch.Tensor | None,
              spec_q: list[float]):
        """One row's forward: logits (2N-1, V); u (2N,) uniforms (T > 0); specs in slots 1..a; q (a, V);
        spec_q (a,): each draft's recorded q (token_probs).

        Returns (tokens to emit, their token_probs, slots to commit, next head, next specs, next q,
        next spec_q, accepted drafts). Uniforms: u[:K] acceptance, u[K] correction, u[N] clean token,
        u[N+1:] drafts (exact mode).
        """
        K, a, greedy = self.opts.stride - 1, len(specs), self.opts.temperature == 0
        # token_probs: T > 0, an accepted draft keeps the q it was drawn with; T = 0, acceptance is
        # "s is the argmax of p", so the emitted token is p's argmax and its p is recorded
        probs = [self.prob(logits[i], s) for i, s in enumerate(specs)] if greedy else list(spec_q)
        for i, s in enumerate(specs):  # slot i predicts slot i + 1, where specs[i] sits
            if greedy:
                best = int(logits[i].argmax())
                if s == best:
                    continue
                return specs[:i] + [best], probs[:i] + [self.prob(logits[i], best)], i + 1, best, [], None, [], i
            p = self.target_probs(logits[i])  # (V,)
            ratio = float(p[s] / q[i, s]) if q[i, s] > 0 else 0.0
            if ratio >= 1 or float(u[i]) < ratio:
                continue
            residual = (p - q[i]).clamp_min(0)  # (V,)
            dist = residual if float(residual.sum()) > 0 else p
            c = int(draw(dist[None], u[K:K + 1])[0])
            return specs[:i] + [c], probs[:i] + [self.prob(logits[i], c)], i + 1, c, [], None, [], i
        clean = int(self.pick(logits[a:a + 1], None if greedy else u[K + 1:K + 2])[0])
        new, new_q = self.drafts(logits[a + 1:a + 1 + K], None if greedy else u[K + 2:])
        new_spec_q = [] if greedy else (
            token_probability(logits[a + 1:a + 1 + K], new, self.opts.temperature).tolist() if self.keep_probs
            else [math.nan] * len(new))
        return (specs + [clean], probs + [self.prob(logits[a], clean)], a + 1, clean, new.tolist(), new_q, new_spec_q,
                a)

    # -- the loop -------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, state: DenoiseState) -> None:
        o, net, facts = self.opts, state.model.net, state.model.facts
        N, W = o.stride, 2 * o.stride - 1
        x, P, G = state.x, state.prompt_length, o.gen_length
        B, dev = x.shape[0], x.device
        am = state.attention_mask[:, :P] if state.attention_mask is not None else torch.ones_like(x[:, :P])  # (B, P)
        eos = facts.eos_ids[0] if facts.eos_ids else None
        stops = set(facts.stop_ids) if o.stop_at_eos and eos is not None else set()
        emitted, done, forwards = [0] * B, [False] * B, [0] * B
        stats = {"accepted": 0, "proposed": 0, "cold_rounds": 0, "verify_rounds": 0}

        def emit(r: int, tokens: list[int], probs: list[float]) -> int:  # a stop token or G ends the row
            for k, (t, prob) in enumerate(zip(tokens, probs)):
                state.record_token_probs(r, P + emitted[r], prob)
                x[r, P + emitted[r]] = t
                emitted[r] += 1
                if t in stops or emitted[r] == G:
                    done[r] = True
                    if t in stops:
                        x[r, P + emitted[r]:] = eos  # the rest of the round is dropped
                    return k + 1
            return len(tokens)

        def noise() -> torch.Tensor | None:  # (B, 2N) uniforms, the same draws per forward for every row
            return state.rand_rows(2 * N, dtype=torch.float64) if o.temperature > 0 else None

        cache = kv_cache_kwargs(net)  # {"cache": DynamicCache}: filled in place by every forward
        positions = (am.cumsum(-1) - 1).clamp_min(0)  # (B, P): left padding shifts positions
        out = net(input_ids=x[:, :P], attention_mask=am, position_ids=positions, use_cache=True, logits_to_keep=1,
                  **cache)
        state.nfe += 1
        u = noise()
        last = state.check_finite(out.logits[:, -1].float())  # (B, V): the prompt's last logits
        t0 = self.pick(last, None if u is None else u[:, N])  # (B,)
        heads, specs, qs, spec_q = t0.tolist(), [[] for _ in range(B)], [None] * B, [[] for _ in range(B)]
        self.keep_probs = state.keep_token_probs
        t0_q = token_probability(last, t0, o.temperature).tolist() if self.keep_probs else [math.nan] * B  # (B,)
        for r in range(B):
            forwards[r] += 1
            emit(r, [heads[r]], [t0_q[r]])
        state.record()
        layers = _full_attention_layers(next(iter(cache.values())))
        rows = [r for r in range(B) if not done[r]]  # rows still decoding = the cache's rows, in this order
        if rows:  # (R, S): cache columns holding a token, finished rows dropped
            valid = _repack(layers, am.bool(), torch.zeros(B, dtype=torch.long, device=dev),
                            torch.tensor([not d for d in done], device=dev))
        while rows:
            R = len(rows)
            inp = torch.full((R, W), state.mask_id, dtype=torch.long, device=dev)  # (R, 2N-1)
            for i, r in enumerate(rows):
                inp[i, :1 + len(specs[r])] = torch.tensor([heads[r], *specs[r]])
            pos = valid.sum(-1, keepdim=True) + torch.arange(W, device=dev)  # (R, 2N-1): committed + slot
            if facts.max_positions:  # slots past the limit only draft tokens past gen_length
                pos = pos.clamp_max(facts.max_positions - 1)
            attn = torch.cat([valid, valid.new_ones(R, W)], dim=1).long()  # (R, S + 2N-1), causal inside
            logits = state.check_finite(net(input_ids=inp, attention_mask=attn, position_ids=pos, use_cache=True,
                                            **cache).logits.float())  # (R, 2N-1, V)
            state.nfe += 1
            u = noise()
            commits = []
            for i, r in enumerate(rows):
                forwards[r] += 1
                stats["verify_rounds" if specs[r] else "cold_rounds"] += 1
                proposed = len(specs[r])
                tokens, probs, commit, heads[r], specs[r], qs[r], spec_q[r], accepted = self.round(
                    logits[i], None if u is None else u[r], specs[r], qs[r], spec_q[r])
                kept = emit(r, tokens, probs)
                if done[r]:  # the row ended this round: drafts past its stop token or gen_length were never used
                    proposed, accepted = min(proposed, kept), min(accepted, kept)
                stats["proposed"] += proposed
                stats["accepted"] += accepted
                commits.append(commit)
            state.record()
            keep = [not done[r] for r in rows]
            if any(keep):  # committed K/V only: mask slots and rejected drafts leave the cache
                valid = _repack(layers, valid, torch.tensor(commits, device=dev), torch.tensor(keep, device=dev))
            rows = [r for r in rows if not done[r]]
        state.stats.update(stats, tokens=emitted, forwards=forwards,
                           tokens_per_forward=sum(emitted) / sum(forwards),
                           acceptance_rate=stats["accepted"] / stats["proposed"] if stats["proposed"] else None)


def _full_attention_layers(cache) -> list:
    layers = getattr(cache, "layers", None)
    if not layers or any(getattr(layer, "is_sliding", False) or not hasattr(layer, "keys") for layer in layers):
        raise DLMError("sampler 'isd' re-packs the KV cache per row and needs transformers' DynamicCache with "
                       "full-attention layers (no sliding-window layers)")
    return list(layers)


def _repack(layers: list, valid: torch.Tensor, commits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Keep committed K/V only. valid (R, S): the old cache columns holding a token (right-aligned);
    the cache now has S + w columns (w new slots); row i keeps its tokens and its first commits[i]
    new slots, rows with keep[i] False go. Returns valid (R', S') of the re-packed cache."""
    R, S = valid.shape
    if bool(keep.all()) and bool((commits == commits[0]).all()):  # same commit everywhere: a crop
        c = int(commits[0])
        for layer in layers:
            layer.keys, layer.values = layer.keys[..., :S + c, :], layer.values[..., :S + c, :]
        return torch.cat([valid, valid.new_ones(R, c)], dim=1)
    old = valid.sum(-1)[keep]  # (R',) tokens each kept row had
    new = old + commits[keep]  # (R',) tokens it has now
    S2 = int(new.max()) if new.numel() else 0
    t = torch.arange(S2, device=valid.device)[None] - (S2 - new)[:, None]  # (R', S2): index among the row's tokens
    src = torch.where(t < old[:, None], S - old[:, None] + t, S + t - old[:, None])  # (R', S2) old column
    src = src.clamp(0, layers[0].keys.shape[-2] - 1)  # padding cells read any column: hidden by the mask
    rows = keep.nonzero()[:, 0]
    for layer in layers:
        k, v = layer.keys[rows], layer.values[rows]  # (R', H, S + w, D)
        idx = src[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])  # (R', H, S2, D)
        layer.keys, layer.values = k.gather(2, idx), v.gather(2, idx)
    return t >= 0
