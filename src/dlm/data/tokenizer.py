"""A byte-level BPE tokenizer for dlm's shipped models, trained with ``tokenizers``.

Special tokens (ids 0..6, in this order): ``<|bos|> <|eos|> <|pad|> <|mask|> <|user|>
<|assistant|> <|eot|>`` - the same set and chat template as the byte-level default tokenizer, so
every dlm model shares one prompt format::

    <|bos|><|user|>\\n{content}<|eot|><|assistant|>\\n{answer}<|eos|>
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from dlm.errors import DLMError
from dlm.models.default import CHAT_TEMPLATE, SPECIAL_TOKENS

MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte plus the special tokens


def wrap_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
        mask_token="<|mask|>", chat_template=CHAT_TEMPLATE, padding_side="left",
    )


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < MIN_VOCAB:
        raise DLMError(f"--vocab-size must be at least {MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} special tokens), "
                       f"got {vocab_size}")


def train_bpe(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2):
    """Train a byte-level BPE on ``texts`` and return a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def build_tokenizer(data_dir: str | Path, out_dir: str | Path, vocab_size: int = 8192):
    """Train on the train split of the Debian set (synopses and descriptions) and save in HF format."""
    from dlm.data.debian import load_split

    check_vocab_size(vocab_size)
    rows = load_split(data_dir, "train")
    tok = train_bpe((t for r in rows for t in (r["synopsis"], r["description"])), vocab_size=vocab_size)
    tok.save_pretrained(str(out_dir))
    return tok
