"""Discrete Stochastic Localization (DSL-LLaDA) modules: the noise embedding and the converter.

A DSL model reads a *noisy embedding* z (B, L, d) per position instead of a token id (fengsxy/DSL-LLaDA
``dsl_llada/core/dsl_modules.py``):

    E        (V, d)     the noise embedding: rows N(0, 1), L2-normalised, frozen
    z        = s E[x] + sqrt(s) eps                         per-token SNR s, eps ~ N(0, I_d), fp32
    logits_k = beta <z, K_k> + b_k   over V + 1 slots, K = [E; 0] (the last slot is "still noise")
    p        = softmax(logits)                              fp32
    h        = W p + c                                      (B, L, d_model) -> the backbone's inputs_embeds

W (d_model, V + 1) starts as the backbone's input embedding with the mask token's row in the extra slot,
so a confident p gives the token's own embedding and pure noise the mask embedding; c keeps
``nn.Linear``'s default initialisation; b = 0 except b_V = log V; beta is learnable.

Checkpoint layout (the released DSL-LLaDA checkpoints, read and written unchanged): the backbone's
tensors plus top-level ``noise_embed.weight`` [V, d], ``converter.beta`` (0-dim),
``converter.logit_bias`` [V + 1], ``converter.backbone_embedding.weight`` [d_model, V + 1],
``converter.backbone_embedding.bias`` [d_model], ``converter.embed.weight`` (a copy of E) and
``log_snr_max`` (0-dim). d comes from E's shape and beta from its tensor, as in the reference.

The DSL parameters stay float32 whatever the backbone's dtype (the reference computes the converter in
fp32 and casts h to the backbone's dtype).
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlm.errors import CheckpointError

NOISE_DIM = 100  # d of the released Beta1 / Beta2 checkpoints (the reference code's default is 48)
NOISE_SEED = 42  # the root dsl_modules.py draws E under torch.manual_seed(42)
SNR_MAX = 100.0
# tensor names of the released layout
KEYS = ("noise_embed.weight", "converter.beta", "converter.logit_bias", "converter.backbone_embedding.weight",
        "converter.backbone_embedding.bias")
OPTIONAL_KEYS = ("converter.embed.weight", "log_snr_max")


def noise_embedding(vocab_size: int, noise_dim: int, seed: int = NOISE_SEED) -> torch.Tensor:
    """E (V, d): N(0, 1) rows from ``torch.Generator().manual_seed(seed)``, L2-normalised (float32, CPU).

    Equal to the reference's ``nn.Embedding(V, d)`` initialised after ``torch.manual_seed(seed)`` and
    normalised (``normal_`` on a fresh embedding and ``torch.randn`` draw the same stream)."""
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(vocab_size, noise_dim, generator=gen), dim=-1)


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


class Converter(nn.Module):
    """z (B, L, d) -> h (B, L, d_model): beta-scaled similarities to [E; 0], softmax, then W p + c."""

    def __init__(self, noise_embed: nn.Embedding, W: torch.Tensor, c: torch.Tensor, beta: torch.Tensor,
                 logit_bias: torch.Tensor):
        super().__init__()
        self.noise_embed = [noise_embed]  # shared with DSLModules, not registered twice
        V1, d_model = W.shape[1], W.shape[0]
        self.backbone_embedding = nn.Linear(V1, d_model, device="meta")  # W (d_model, V + 1), c (d_model,): adopted
        self.backbone_embedding.weight = nn.Parameter(W)
        self.backbone_embedding.bias = nn.Parameter(c)
        self.beta = nn.Parameter(beta)
        self.logit_bias = nn.Parameter(logit_bias)

    def token_probs(self, z: torch.Tensor, beta: float | torch.Tensor | None = None) -> torch.Tensor:
        """p (B, L, V + 1) in float32; ``beta`` overrides the stored one (inference uses 2 x beta)."""
        E = self.noise_embed[0].weight.float()  # (V, d)
        K = torch.cat([E, E.new_zeros(1, E.shape[1])], dim=0)  # (V + 1, d)
        b = self.beta.float() if beta is None else beta
        with torch.autocast(z.device.type, enabled=False):  # float32 even under mixed precision, as the reference
            logits = b * (z.float() @ K.T) + self.logit_bias.float()  # (B, L, V + 1)
            return F.softmax(logits, dim=-1)

    def forward(self, z: torch.Tensor, beta: float | torch.Tensor | None = None) -> torch.Tensor:
        p = self.token_probs(z, beta)
        return F.linear(p, self.backbone_embedding.weight.float(), self.backbone_embedding.bias.float())  # (B, L, D)


class DSLModules(nn.Module):
    """What DSL adds to a diffusion model: E, the converter and log(s_max), built from their tensors (float32,
    adopted as they are: no random initialisation to overwrite)."""

    def __init__(self, E: torch.Tensor, W: torch.Tensor, c: torch.Tensor, beta: torch.Tensor,
                 logit_bias: torch.Tensor, log_snr_max: torch.Tensor):
        super().__init__()
        self.noise_embed = nn.Embedding.from_pretrained(E.float(), freeze=True)  # (V, d)
        self.converter = Converter(self.noise_embed, W.float(), c.float(), beta.float().reshape(()),
                                   logit_bias.float())
        self.log_snr_max = nn.Parameter(log_snr_max.float().reshape(()), requires_grad=False)

    @property
    def vocab_size(self) -> int:
        return self.noise_embed.weight.shape[0]

    @property
    def noise_dim(self) -> int:
        return self.noise_embed.weight.shape[1]

    @property
    def snr_max(self) -> float:
        return float(self.log_snr_max.exp())

    def noisy_embedding(self, ids: torch.Tensor, snr: torch.Tensor, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
        """z (B, L, d) = s E[x] + sqrt(s) eps for token ids (B, L) at SNRs ``snr`` (B, L), in float32."""
        e = self.noise_embed.weight.float()[ids]  # (B, L, d)
        s = snr.float()[..., None]  # (B, L, 1)
        eps = torch.randn(e.shape, dtype=torch.float32, device=e.device, generator=generator)
        return s * e + s.clamp_min(0.0).sqrt() * eps

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The released layout's top-level tensors (float32)."""
        conv = self.converter
        E = self.noise_embed.weight.detach().float()
        return {
            "noise_embed.weight": E,
            "converter.beta": conv.beta.detach().float(),
            "converter.logit_bias": conv.logit_bias.detach().float(),
            "converter.backbone_embedding.weight": conv.backbone_embedding.weight.detach().float(),
            "converter.backbone_embedding.bias": conv.backbone_embedding.bias.detach().float(),
            "converter.embed.weight": E.clone(),
            "log_snr_max": self.log_snr_max.detach().float(),
        }


def topk_expected_embedding(logits: torch.Tensor, E: torch.Tensor, top_k: int) -> torch.Tensor:
    """x_hat (B, L, d): the backbone's softmax at each position, cut to its ``top_k`` most likely tokens
    and renormalised, averaged over E's rows (float32, as the reference's ``get_xhat``)."""
    probs = F.softmax(logits.float(), dim=-1)  # (B, L, V)
    top, idx = probs.topk(min(top_k, probs.shape[-1]), dim=-1)  # (B, L, k)
    top = top / top.sum(dim=-1, keepdim=True)
    return (top.unsqueeze(-1) * E[idx.clamp_max(E.shape[0] - 1)]).sum(dim=-2)


def pop_dsl_tensors(tensors: dict[str, torch.Tensor], origin: dict[str, str]) -> dict[str, torch.Tensor]:
    """Remove the DSL tensors from a checkpoint's state dict; {} for a plain model."""
    names = [k for k in (*KEYS, *OPTIONAL_KEYS) if k in tensors]
    extra = [k for k in tensors if k.startswith("converter.") and k not in names]
    if not names:
        return {}
    missing = [k for k in KEYS if k not in tensors]
    if missing:
        raise CheckpointError(f"{origin[names[0]]}: a DSL checkpoint needs {', '.join(KEYS)}; "
                              f"'{missing[0]}' is missing")
    if extra:
        raise CheckpointError(f"{origin[extra[0]]}: DSL tensor '{extra[0]}' is not supported by dlm "
                              "(converter.residual_proj and LoRA variants of the converter are not implemented)")
    out = {k: tensors.pop(k) for k in names}
    for k in names:
        origin.pop(k, None)
    return out


def dsl_from_tensors(tensors: dict[str, torch.Tensor], vocab_size: int, d_model: int, where: str) -> DSLModules:
    """DSLModules holding a checkpoint's DSL tensors (shapes checked against the backbone)."""
    E = tensors["noise_embed.weight"]
    if E.dim() != 2 or E.shape[0] != vocab_size:
        raise CheckpointError(f"{where}: noise_embed.weight has shape {tuple(E.shape)}, expected "
                              f"({vocab_size}, d) for this backbone's vocabulary")
    V, d = E.shape
    want = {"converter.beta": (), "converter.logit_bias": (V + 1,), "converter.backbone_embedding.weight": (d_model, V + 1),
            "converter.backbone_embedding.bias": (d_model,), "converter.embed.weight": (V, d), "log_snr_max": ()}
    for k, shape in want.items():
        if k in tensors and tuple(tensors[k].shape) != shape:
            raise CheckpointError(f"{where}: {k} has shape {tuple(tensors[k].shape)}, expected {shape}")
    log_snr_max = tensors.get("log_snr_max", torch.tensor(math.log(SNR_MAX)))
    return DSLModules(E, tensors["converter.backbone_embedding.weight"], tensors["converter.backbone_embedding.bias"],
                      tensors["converter.beta"], tensors["converter.logit_bias"], log_snr_max)


def initial_converter_weight(input_embedding: torch.Tensor, mask_id: int) -> torch.Tensor:
    """W (d_model, V + 1) as DSL initialises it: the backbone's input embedding, the mask row in the extra slot."""
    wte = input_embedding.detach().float()  # (V, d_model)
    return torch.cat([wte, wte[mask_id:mask_id + 1]], dim=0).T.contiguous()


def initial_tensors(input_embedding: torch.Tensor, mask_id: int, noise_dim: int = NOISE_DIM, seed: int = NOISE_SEED,
                    beta: float = 1.0, snr_max: float = SNR_MAX) -> dict[str, torch.Tensor]:
    """The released layout's tensors of fresh DSL modules for a backbone with input embedding (V, d_model):
    E from ``seed``, W from :func:`initial_converter_weight`, c drawn as nn.Linear initialises a bias (from
    ``seed + 1``), b = log V at the extra slot, log(s_max)."""
    V, d_model = input_embedding.shape
    gen = torch.Generator().manual_seed(seed + 1)
    bound = 1 / math.sqrt(V + 1)  # nn.Linear's default bias range
    logit_bias = torch.zeros(V + 1)
    logit_bias[-1] = math.log(V)  # pure noise reads as the extra (mask) slot
    return {"noise_embed.weight": noise_embedding(V, noise_dim, seed),
            "converter.beta": torch.tensor(float(beta)),
            "converter.logit_bias": logit_bias,
            "converter.backbone_embedding.weight": initial_converter_weight(input_embedding, mask_id),
            "converter.backbone_embedding.bias": torch.rand(d_model, generator=gen) * 2 * bound - bound,
            "log_snr_max": torch.tensor(math.log(snr_max))}


def new_dsl(input_embedding: torch.Tensor, mask_id: int, noise_dim: int = NOISE_DIM, seed: int = NOISE_SEED,
            beta: float = 1.0, snr_max: float = SNR_MAX) -> DSLModules:
    """Fresh DSL modules for a backbone with input embedding (V, d_model) and mask token ``mask_id``
    (:func:`initial_tensors`)."""
    V, d_model = input_embedding.shape
    return dsl_from_tensors(initial_tensors(input_embedding, mask_id, noise_dim, seed, beta, snr_max), V, d_model,
                            "new DSL modules")
