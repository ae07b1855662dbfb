"""Training data: packed pretraining sequences and (prompt, answer) SFT examples.

Pretraining documents are ``synopsis\\ndescription<|eos|>``, concatenated and cut into
``seq_len`` blocks (the last partial block is dropped and counted). SFT examples are the chat-
formatted summarisation prompt followed by an answer block of ``answer_length`` tokens:
the synopsis, then EOS repeated to fill the block (LLaDA's SFT recipe: the model learns to stop by
predicting EOS). Batches are drawn by index from a seeded permutation per epoch, so a resumed run
sees exactly the batches it would have seen. ``to_tensors`` / ``from_tensors`` turn a tokenised
split into flat tensors and back (the tokenised-data cache stores them).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from dlm.errors import DLMError

SUMMARY_INSTRUCTION = "Summarize this package description in one line:"


def summary_prompt(description: str, instruction: str | None = SUMMARY_INSTRUCTION) -> str:
    """The user message of the summarisation task."""
    return f"{instruction}\n\n{description}" if instruction else description


def pretraining_text(record: dict) -> str:
    """A Debian record as one pretraining document."""
    return f"{record['synopsis']}\n{record['description']}"


def _bar(desc: str, progress: bool, **kw):
    """A progress bar on stderr over documents (``iterable=`` or ``total=``)."""
    return tqdm(desc=desc, unit="doc", file=sys.stderr, disable=not progress, dynamic_ncols=True, **kw)


def pack_documents(tokenizer, texts: list[str], seq_len: int, progress: bool = False,
                   desc: str = "tokenising") -> tuple[torch.Tensor, dict]:
    """Tokenise, join with EOS and cut into (N, seq_len) blocks. Returns (blocks, stats)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    with _bar(desc, progress, total=len(texts)) as bar:
        for start in range(0, len(texts), 2048):
            for row in tokenizer(texts[start:start + 2048], add_special_tokens=False)["input_ids"]:
                ids.extend(row)
                ids.append(eos)
            bar.update(len(texts[start:start + 2048]))
    n = len(ids) // seq_len
    blocks = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    return blocks, {"documents": len(texts), "tokens": len(ids), "blocks": n, "dropped_tail_tokens": len(ids) - n * seq_len}


@dataclass
class SFTExample:
    prompt: list[int]
    answer: list[int]  # synopsis + EOS (causal) or synopsis + EOS fill to answer_length (diffusion)


def sft_examples(tokenizer, records: list[dict], seq_len: int, answer_length: int, diffusion: bool,
                 instruction_dropout: float = 0.0, seed: int = 0, progress: bool = False,
                 desc: str = "tokenising") -> tuple[list[SFTExample], dict]:
    """Chat-formatted summarisation examples; pairs that do not fit are skipped and counted.

    ``instruction_dropout``: share of examples whose prompt is the bare description (so the model
    also summarises text given without the instruction). A record with ``prompt`` and ``answer``
    (``dlm train --task arith``) is taken as it is (no instruction, no dropout).
    """
    eos = tokenizer.eos_token_id
    rng = random.Random(seed)
    examples, too_long_prompt, too_long_answer = [], 0, 0
    for r in _bar(desc, progress, iterable=records):
        if "prompt" in r:
            message, target = r["prompt"], r["answer"]
        else:
            instruction = None if rng.random() < instruction_dropout else SUMMARY_INSTRUCTION
            message, target = summary_prompt(r["description"], instruction), r["synopsis"]
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": message}],
                                               add_generation_prompt=True, tokenize=True)
        if hasattr(prompt, "keys"):
            prompt = prompt["input_ids"]
        answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [eos]
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


def _ragged(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids -> (flat ids (T,), offsets (n + 1,)); row i is flat[offsets[i]:offsets[i + 1]]."""
    lengths = torch.tensor([0] + [len(r) for r in rows], dtype=torch.long)
    flat = torch.tensor([t for r in rows for t in r], dtype=torch.int32)
    return flat, lengths.cumsum(0)


def _unragged(flat: torch.Tensor, offsets: torch.Tensor) -> list[list[int]]:
    ids, ends = flat.tolist(), offsets.tolist()
    return [ids[a:b] for a, b in zip(ends[:-1], ends[1:])]


def to_tensors(data: torch.Tensor | list[SFTExample], prefix: str) -> dict[str, torch.Tensor]:
    """A tokenised split as int32 tensors named ``prefix.*``: packed blocks (N, seq_len), or SFT
    prompts and answers as flat ids + offsets."""
    if isinstance(data, torch.Tensor):
        return {f"{prefix}.blocks": data.to(torch.int32)}
    prompt, prompt_offsets = _ragged([e.prompt for e in data])
    answer, answer_offsets = _ragged([e.answer for e in data])
    return {f"{prefix}.prompt": prompt, f"{prefix}.prompt_offsets": prompt_offsets,
            f"{prefix}.answer": answer, f"{prefix}.answer_offsets": answer_offsets}


def from_tensors(tensors: dict[str, torch.Tensor], prefix: str) -> torch.Tensor | list[SFTExample]:
    """The inverse of :func:`to_tensors`."""
    if f"{prefix}.blocks" in tensors:
        return tensors[f"{prefix}.blocks"].long()
    prompts = _unragged(tensors[f"{prefix}.prompt"], tensors[f"{prefix}.prompt_offsets"])
    answers = _unragged(tensors[f"{prefix}.answer"], tensors[f"{prefix}.answer_offsets"])
    return [SFTExample(p, a) for p, a in zip(prompts, answers)]


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
            raise DLMError(f"the train split has {size} usable examples, fewer than one global batch "
                           f"({batch_size} rows x {world} process(es)); use more data, a smaller --batch-size "
                           "or --grad-accum, or a --seq-len that fits the examples")
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
