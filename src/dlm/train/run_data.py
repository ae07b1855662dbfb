"""The training data of a ``dlm train`` run, as a mixin of :class:`dlm.train.trainer.Trainer`:
the train and validation splits tokenised once per data, tokenizer and settings, then cached
(:mod:`dlm.train.cache`), and the batches of them the loop puts on the device.
"""

from __future__ import annotations

import torch

from dlm.models.registry import CAUSAL_OBJECTIVES
from dlm.train import cache
from dlm.train.data import (SUMMARY_INSTRUCTION, collate_sft, from_tensors, pack_documents, pretraining_text,
                            sft_examples, to_tensors)


class RunData:
    """Needs ``acc``, ``cfg``, ``tokenizer``, ``facts`` and ``_say`` of the trainer."""

    def _load_data(self):
        """(train, validation, stats): tokenised once per data, tokenizer and settings, then cached."""
        from dlm.data.debian import split_file

        cfg = self.cfg
        if cfg.task == "arith":
            from dlm.data import arith

            files, data = [], {"generated": "dlm.data.arith", "version": arith.GENERATOR_VERSION,
                               "sizes": arith.SPLIT_SIZES}
        else:
            files = [split_file(cfg.data_dir(), split) for split in ("train", "validation")]
            data = [cache.file_digest(f) for f in files]
        settings = {"task": cfg.task, "seq_len": cfg.seq_len}
        if cfg.is_sft:
            settings.update(answer_length=cfg.answer_length, instruction_dropout=cfg.instruction_dropout,
                            seed=cfg.seed, diffusion=cfg.objective not in CAUSAL_OBJECTIVES,
                            instruction=SUMMARY_INSTRUCTION if cfg.task == "sft" else None)
        tokenizer = cache.tokenizer_digest(self.tokenizer, chat=cfg.is_sft)
        path = cache.cache_path({"data": data, "tokenizer": tokenizer, **settings})
        with self.acc.main_process_first():  # the main process tokenises and writes; the others read
            hit = cache.load(path)
            if hit is None:
                train, val, stats = self._tokenise()
                if self.acc.is_main_process:
                    cache.save(path, {**to_tensors(train, "train"), **to_tensors(val, "validation")}, stats)
                return train, val, stats
        self._say(f"dlm train: using the tokenised data cached in {path}")
        tensors, stats = hit
        return from_tensors(tensors, "train"), from_tensors(tensors, "validation"), stats

    def _tokenise(self):
        from dlm.data.debian import load_split

        cfg = self.cfg
        show = cfg.progress and self.acc.is_main_process
        if cfg.task == "arith":
            from dlm.data.arith import arith_split, sft_record

            train, val = ([sft_record(r) for r in arith_split(split)] for split in ("train", "validation"))
        else:
            train, val = load_split(cfg.data_dir(), "train"), load_split(cfg.data_dir(), "validation")
        if cfg.task == "pretrain":
            tr, tr_stats = pack_documents(self.tokenizer, [pretraining_text(r) for r in train], cfg.seq_len, show,
                                          "tokenising train")
            va, va_stats = pack_documents(self.tokenizer, [pretraining_text(r) for r in val], cfg.seq_len, show,
                                          "tokenising validation")
            return tr, va, {"train": tr_stats, "validation": va_stats}
        diffusion = cfg.objective not in CAUSAL_OBJECTIVES  # EOS-filled answer blocks; causal: answer + EOS
        tr, tr_stats = sft_examples(self.tokenizer, train, cfg.seq_len, cfg.answer_length, diffusion,
                                    cfg.instruction_dropout, cfg.seed, show, "tokenising train")
        va, va_stats = sft_examples(self.tokenizer, val, cfg.seq_len, cfg.answer_length, diffusion, 0.0, cfg.seed,
                                    show, "tokenising validation")
        return tr, va, {"train": tr_stats, "validation": va_stats}

    def _batch(self, data, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cfg.task == "pretrain":
            ids = data[idx]
            batch = {"input_ids": ids, "labels": ids}
        else:
            pad = self.facts.pad_id if self.facts.pad_id is not None else self.facts.eos_ids[0]
            batch = collate_sft([data[int(i)] for i in idx], pad)
            if self.cfg.objective == "causal":
                batch.pop("prompt_lengths")
        return {k: v.to(self.acc.device) for k, v in batch.items()}
