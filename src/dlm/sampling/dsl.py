"""The continuous DSL sampler: a Heun SDE (or ODE) in the noise-embedding space, one readout at the end.

Semantics of DSL-LLaDA's ``generate_sde_text`` (fengsxy/DSL-LLaDA ``dsl_llada/eval/eval_summarization.py``),
token for token under the same seed (tests/fixtures/dsl):

* ``steps`` is the reference's NFE budget: S = steps // 2 Heun steps of two passes each, over an SNR
  schedule s_0 < ... < s_S (:func:`snr_schedule`); a last pass reads the tokens out (NFE = 2 S + 1);
* y_0 (B, G, d) = normalised N(0, I) per generated position;
* x_hat(y, s): the converter reads z = s y (beta = 2 x the stored beta by default) into h; the backbone
  runs on [embeddings of the prompt | h] (the prompt never passes through the converter); its softmax at
  the generated positions, cut to the ``top_k`` most likely tokens and renormalised, averages E's rows;
* Heun predictor-corrector with one Brownian increment dW = sqrt(|ds|) N(0, I) per step:
  f = (x_hat - y) / s, g = noise_scale / s, y_e = y + f ds + g dW, and
  y <- y + (f + f_e) / 2 ds + (g + g_e) / 2 dW with f_e, g_e at (y_e, s_next);
* ``noise_scale`` None = the budget rule (0.1 up to 8 passes, 0.05 up to 16, 0.01 up to 32, else 0.005);
  0 = the deterministic probability-flow ODE;
* the answer: argmax of the backbone's logits at converter(s_S y), every position at once. dlm never
  reads out the mask token (the reference could; with a trained model it does not happen).

The history (``output_history``) holds, per Heun step, the backbone's argmax at the step's first pass:
what the model believes the answer is while nothing is committed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlm.errors import DLMError
from dlm.models.dsl import topk_expected_embedding
from dlm.sampling.base import DenoiseState, Sampler, check_step_count

SCHEDULES = ("sensitive", "loglinear")
SNR_MIN, SNR_KNEE, SNR_HIGH, SNR_END = 0.01, 7.0, 74.0, 100.0


def snr_schedule(steps: int, kind: str = "sensitive") -> torch.Tensor:
    """The S + 1 SNRs (float32) of S = steps // 2 Heun steps.

    ``sensitive`` (the reference's): max(1, floor(0.05 S)) steps 0.01 -> 7, max(1, floor(0.9 S)) steps
    7 -> 74, the rest 74 -> 100, each log-spaced, joined without repeats (S <= 20 never reaches 100).
    ``loglinear``: S log-spaced steps 0.01 -> 100.
    """
    S = steps // 2
    if kind == "loglinear":
        return torch.exp(torch.linspace(math.log(SNR_MIN), math.log(SNR_END), S + 1))
    n1 = max(1, int(S * 0.05))
    n2 = max(1, int(S * 0.90))
    n3 = S - n1 - n2
    return torch.cat([
        torch.exp(torch.linspace(math.log(SNR_MIN), math.log(SNR_KNEE), n1 + 1)),
        torch.exp(torch.linspace(math.log(SNR_KNEE), math.log(SNR_HIGH), n2 + 1))[1:],
        torch.exp(torch.linspace(math.log(SNR_HIGH), math.log(SNR_END), n3 + 1))[1:],
    ])


def budget_noise_scale(steps: int) -> float:
    """The reference's noise scale for a budget of ``steps`` passes."""
    if steps <= 8:
        return 0.1
    if steps <= 16:
        return 0.05
    return 0.01 if steps <= 32 else 0.005


@dataclass
class DSLOptions:
    gen_length: int = 128
    steps: int = 16  # the NFE budget: steps // 2 Heun steps (2 passes each) + 1 readout pass
    schedule: str = "sensitive"  # or "loglinear"
    noise_scale: float | None = None  # None: 0.1 / 0.05 / 0.01 / 0.005 by budget; 0 = the ODE
    beta: float | None = None  # converter sharpness at inference; None: 2 x the stored beta
    top_k: int = 512  # x_hat averages E over the backbone's top_k tokens


class DSLSampler(Sampler):
    name = "dsl"
    Options = DSLOptions

    @classmethod
    def options_for_nfe(cls, nfe: int, options: dict) -> dict:
        """steps = NFE: NFE / 2 Heun steps of two passes (plus the readout pass, as the reference counts)."""
        return {"steps": nfe}

    def validate(self, model) -> None:
        o = self.opts
        if getattr(model, "dsl", None) is None:
            raise DLMError(f"sampler 'dsl' needs a DSL model (a noise embedding and a converter); "
                           f"{model.path or 'this model'} has none: train one with `dlm train --objective dsl`")
        if o.gen_length <= 0:
            raise DLMError(f"gen_length must be >= 1, got {o.gen_length}")
        check_step_count(o.steps)
        if o.steps < 4 or o.steps % 2:
            raise DLMError(f"steps must be even and >= 4 (two forward passes per Heun step), got {o.steps}")
        if o.schedule not in SCHEDULES:
            raise DLMError(f"schedule must be one of {', '.join(SCHEDULES)}, got {o.schedule!r}")
        if o.noise_scale is not None and not (0 <= o.noise_scale < math.inf):
            raise DLMError(f"noise_scale must be >= 0 (0 = the ODE), got {o.noise_scale}")
        if o.beta is not None and not (0 < o.beta < math.inf):
            raise DLMError(f"beta must be > 0, got {o.beta}")
        if o.top_k < 1:
            raise DLMError(f"top_k must be >= 1, got {o.top_k}")

    def total_steps(self) -> int:
        return self.opts.steps // 2 + 1

    def _randn(self, state: DenoiseState, G: int, d: int) -> torch.Tensor:
        """N(0, 1) noise (B, G, d): one draw for the batch, or one (G, d) draw per row's generator."""
        B, dev = state.x.shape[0], state.x.device
        if state.per_row:
            return torch.stack([torch.randn(G, d, device=dev, generator=g) for g in state.generator])
        return torch.randn(B, G, d, device=dev, generator=state.generator)

    def _readout(self, state: DenoiseState, prompt_embeds: torch.Tensor, y: torch.Tensor, s: torch.Tensor,
                 beta: float) -> torch.Tensor:
        """Logits (B, G, V) of the backbone at converter(s y), the prompt as clean embeddings: one pass."""
        model = state.model
        h = model.dsl.converter(s * y, beta).to(model.dtype)  # (B, G, D)
        embeds = torch.cat([prompt_embeds, h], dim=1)  # (B, P + G, D)
        state.nfe += 1
        logits = model(None, attention_mask=state.attention_mask, inputs_embeds=embeds,
                       logits_from=state.prompt_length).logits
        return state.check_finite(logits).float()

    def run(self, state: DenoiseState) -> None:
        o, model = self.opts, state.model
        dsl = model.dsl
        P, G = state.prompt_length, state.x.shape[1] - state.prompt_length
        E = dsl.noise_embed.weight.float()  # (V, d)
        beta = 2.0 * float(dsl.converter.beta.detach()) if o.beta is None else o.beta
        ns = budget_noise_scale(o.steps) if o.noise_scale is None else o.noise_scale
        snrs = snr_schedule(o.steps, o.schedule).to(state.x.device)  # (S + 1,)
        state.stats.update(heun_steps=len(snrs) - 1, noise_scale=ns, beta=beta, snr_schedule=snrs.tolist())
        prompt_embeds = model.input_embeddings()(state.x[:, :P])  # (B, P, D)
        y = F.normalize(self._randn(state, G, dsl.noise_dim), dim=-1)  # (B, G, d)

        def x_hat(yy: torch.Tensor, s: torch.Tensor, first: bool) -> torch.Tensor:
            logits = self._readout(state, prompt_embeds, yy, s, beta)  # (B, G, V)
            if first and state.history is not None:
                state.x[:, P:] = logits.argmax(dim=-1)
            return topk_expected_embedding(logits, E, o.top_k)

        for i in range(len(snrs) - 1):
            s, s_next = snrs[i], snrs[i + 1]
            ds = s_next - s
            dW = torch.sqrt(ds.abs()) * self._randn(state, G, dsl.noise_dim)
            f = (x_hat(y, s, True) - y) / s
            g = ns / s
            y_euler = y + f * ds + g * dW
            f_e = (x_hat(y_euler, s_next, False) - y_euler) / s_next
            g_e = ns / s_next
            y = y + 0.5 * (f + f_e) * ds + 0.5 * (g + g_e) * dW
            state.record()
        logits = self._readout(state, prompt_embeds, y, snrs[-1], beta)
        logits[..., state.mask_id] = -torch.inf  # never read out the mask token
        state.x[:, P:] = logits.argmax(dim=-1)
        state.record()
