"""The embedded default model used when no ``--model`` / ``path`` is given.

Until dlm ships trained weights, the default is a tiny LLaDA-architecture model with seeded random
weights and a byte-level tokenizer, built on the fly in well under a second. It exercises the whole
pipeline (tokenizer, chat template, sampler, CLI) but its text is noise.
"""

from __future__ import annotations

import functools

import torch

from dlm.models.diffusion_lm import DiffusionLM
from dlm.models.llada import LLaDAConfig, LLaDAModelLM
from dlm.models.registry import resolve_facts

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>", "<|user|>", "<|assistant|>", "<|eot|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens, no merges) plus the special tokens a DLM needs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
        mask_token="<|mask|>", chat_template=CHAT_TEMPLATE, padding_side="left",
    )


def tiny_llada_config(vocab_size: int, **overrides) -> dict:
    """A LLaDA ``config.json`` dict for a tiny model (2 layers, d_model 64 unless overridden)."""
    cfg = dict(
        model_type="llada", architectures=["LLaDAModelLM"], d_model=64, n_heads=4, n_kv_heads=4, n_layers=2,
        mlp_hidden_size=128, vocab_size=vocab_size, embedding_size=vocab_size, max_sequence_length=1024,
        rope=True, rope_theta=500000.0, rope_full_precision=True, rms_norm_eps=1e-5, layer_norm_type="rms",
        activation_type="silu", block_type="llama", include_bias=False, weight_tying=False,
    )
    cfg.update(overrides)
    return cfg


@functools.lru_cache(maxsize=1)
def _default_state() -> tuple[dict, dict]:
    tok = byte_tokenizer()
    ids = {name: tok.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    cfg = tiny_llada_config(
        len(tok), mask_token_id=ids["<|mask|>"], eos_token_id=ids["<|eos|>"], pad_token_id=ids["<|pad|>"],
        bos_token_id=ids["<|bos|>"], eot_token_id=ids["<|eot|>"],
    )
    net = LLaDAModelLM(LLaDAConfig.from_dict(cfg))
    net.init_weights(std=0.02, generator=torch.Generator().manual_seed(0))
    return cfg, {k: v.clone() for k, v in net.state_dict().items()}


def default_model() -> DiffusionLM:
    cfg, state = _default_state()
    net = LLaDAModelLM(LLaDAConfig.from_dict(cfg))
    net.load_state_dict(state)
    tok = byte_tokenizer()
    facts = resolve_facts("llada", cfg, net.config.padded_vocab_size, tok)
    return DiffusionLM(net, facts, cfg, tokenizer=tok, path=None)
