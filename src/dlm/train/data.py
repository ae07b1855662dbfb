"""Training data: packed pretraining sequences and (prompt, answer) SFT examples.

Pretraining documents are ``synopsis\\ndescription<|eos|>``, concatenated and cut into
``seq_len`` blocks (the last partial block is dropped and counted). SFT examples are the chat-
formatted summarisation prompt followed by an answer block of ``answer_length`` tokens:
the synopsis, then EOS repeated to fill the block (LLaDA's SFT recipe: the model learns to stop by
predicting EOS). Batches are drawn by index from a seeded permutation per epoch, so a resumed run
sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

SUMMARY_INSTRUCTION = "Summarize this package description in one line:"


def summary_prompt(description: str, instruction: str | None = SUMMARY_INSTRUCTION) -> str:
    """The user message of the summarisation task."""
    return f"{instruction}\n\n{description}" if instruction else description


def pretraining_text(record: dict) -> str:
    """A Debian record as one pretraining document."""
    return f"{record['synopsis']}\n{record['description']}"


def pack_documents(tokenizer, texts: list[str], seq_len: int) -> tuple[torch.Tensor, dict]:
    """Tokenise, join with EOS and cut into (N, seq_len) blocks. Returns (blocks, stats)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for start in range(0, len(texts), 2048):
        for row in tokenizer(texts[start:start + 2048], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            ids.append(eos)
    n = len(ids) // seq_len
    blocks = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    return blocks, {"documents": len(texts), "tokens": len(ids), "blocks": n, "dropped_tail_tokens": len(ids) - n * seq_len}


@dataclass
class SFTExample:
    prompt: list[int]
    answer: list[int]  # synopsis + EOS (causal) or synopsis + EOS fill to answer_length (diffusion)


def sft_examples(tokenizer, records: list[dict], seq_len: int, answer_length: int, diffusion: bool,
                 instruction_dropout: float = 0.0, seed: int = 0) -> tuple[list[SFTExample], dict]:
    """Chat-formatted summarisation examples; pairs that do not fit are skipped and counted.

    ``instruction_dropout``: share of examples whose prompt is the bare description (so the model
    also summarises text given without the instruction).
    """
    eos = tokenizer.eos_token_id
    rng = random.Random(seed)
    examples, too_long_prompt, too_long_answer = [], 0, 0
    for r in records:
        instruction = None if rng.random() < instruction_dropout else SUMMARY_INSTRUCTION
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": summary_prompt(r["description"], instruction)}],
                                               add_generation_prompt=True, tokenize=True)
        if hasattr(prompt, "keys"):
            prompt = prompt["input_ids"]
        answer = tokenizer(r["synopsis"], add_special_tokens=False)["input_ids"] + [eos]
        if len(answer) > answer_length:
            too_long_answer += 1
            continue
        if diffusion:
            answer = answer + [eos] * (answer_length - len(answer))
        if len(prompt) + answer_length > seq_len:
            too_long_prompt += 1
            continue
        examples.append(SFTExample(list(prompt), answer))
    return examples, {"pairs": len(records), "kept": len(examples), "skipped_long_prompt": too_long_prompt,
                      "skipped_long_answer": too_long_answer}


def collate_sft(examples: list[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad prompt + answer rows. Returns input_ids, attention_mask, prompt_lengths, labels
    (labels: answer tokens, -100 elsewhere, aligned to input positions)."""
    width = max(len(e.prompt) + len(e.answer) for e in examples)
    B = len(examples)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    attn = torch.zeros((B, width), dtype=torch.long)
    labels = torch.full((B, width), -100, dtype=torch.long)
    prompt_lengths = torch.zeros(B, dtype=torch.long)
    for i, e in enumerate(examples):
        row = e.prompt + e.answer
        ids[i, : len(row)] = torch.tensor(row)
        attn[i, : len(row)] = 1
        labels[i, len(e.prompt): len(row)] = torch.tensor(e.answer)
        prompt_lengths[i] = len(e.prompt)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels, "prompt_lengths": prompt_lengths}


class BatchStream:
    """Batch ``step`` of a seeded epoch-wise shuffle, sharded over processes (rank r of world w)."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if size < batch_size * world:
            raise ValueError(f"the dataset has {size} examples, fewer than one global batch ({batch_size} x {world})")
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world
        self.per_epoch = size // (batch_size * world)
        self._perm: tuple[int, torch.Tensor] | None = None

    def indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.size, generator=g))
        glob = self._perm[1][k * self.batch_size * self.world: (k + 1) * self.batch_size * self.world]
        return glob[self.rank:: self.world]
