"""Multi-step arithmetic word problems, generated offline from a seed (no download).

Each problem takes two or three operations on small numbers; its answer shows every step and ends
in ``#### <number>``, the GSM8K layout, so the ``gsm8k`` scorer reads it::

    question: Mia has 14 marbles. She finds 9 more, then gives 6 away. How many marbles does Mia have now?
    answer:   14 + 9 = 23. 23 - 6 = 17.
              #### 17

A task where revision can matter: a model that fills positions in parallel can write the final
number before the steps that produce it, and a sampler that may change visible tokens can repair
it once the steps are written. The splits are disjoint by question text: ``test`` and
``validation`` are drawn first from their own seeds, and ``train`` skips any question they hold.
"""

from __future__ import annotations

import random
from typing import Callable

GENERATOR_VERSION = 1  # bump when the templates change: recorded with results and in the data cache key
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
SPLIT_SIZES = {"train": 20000, "validation": 256, "test": 500}
INSTRUCTION = "Solve the problem step by step. Give the final answer after '####'."

NAMES = ["Mia", "Leo", "Ana", "Tom", "Sara", "Omar", "Lena", "Ravi", "Ivy", "Max", "Nora", "Eli", "Zoe", "Sam"]
ITEMS = ["apples", "marbles", "stickers", "coins", "books", "pens", "cards", "shells", "stamps", "beads"]


def _gain_loss(rng: random.Random, name: str, item: str) -> tuple[str, list[str], int]:
    a, b = rng.randint(5, 40), rng.randint(2, 30)
    c = rng.randint(1, a + b - 1)
    q = (f"{name} has {a} {item}. {name} finds {b} more, then gives {c} away. "
         f"How many {item} does {name} have now?")
    return q, [f"{a} + {b} = {a + b}.", f"{a + b} - {c} = {a + b - c}."], a + b - c


def _boxes(rng: random.Random, name: str, item: str) -> tuple[str, list[str], int]:
    per, boxes = rng.randint(2, 12), rng.randint(2, 9)
    lost = rng.randint(1, per * boxes - 1)
    q = (f"A box holds {per} {item}. {name} buys {boxes} boxes and loses {lost} {item}. "
         f"How many {item} does {name} have?")
    return q, [f"{per} * {boxes} = {per * boxes}.", f"{per * boxes} - {lost} = {per * boxes - lost}."], \
        per * boxes - lost


def _daily(rng: random.Random, name: str, item: str) -> tuple[str, list[str], int]:
    start, per, days = rng.randint(1, 30), rng.randint(2, 9), rng.randint(2, 7)
    spent = rng.randint(1, start + per * days - 1)
    earned, total = per * days, start + per * days
    q = (f"{name} has {start} {item}. {name} gets {per} {item} a day for {days} days, then uses {spent}. "
         f"How many {item} does {name} have left?")
    return q, [f"{per} * {days} = {earned}.", f"{start} + {earned} = {total}.", f"{total} - {spent} = {total - spent}."], \
        total - spent


def _share(rng: random.Random, name: str, item: str) -> tuple[str, list[str], int]:
    friends, each = rng.randint(2, 6), rng.randint(2, 9)
    extra = rng.randint(1, 20)
    total = friends * each + extra
    q = (f"{name} has {total} {item}, keeps {extra} and shares the rest equally among {friends} friends. "
         f"How many {item} does each friend get?")
    return q, [f"{total} - {extra} = {total - extra}.", f"{total - extra} / {friends} = {each}."], each


TEMPLATES: list[Callable[[random.Random, str, str], tuple[str, list[str], int]]] = [_gain_loss, _boxes, _daily, _share]


def problem(rng: random.Random) -> dict[str, str]:
    """One problem: {"question", "answer"} (answer: the steps, then ``#### N``)."""
    template = rng.choice(TEMPLATES)
    question, steps, result = template(rng, rng.choice(NAMES), rng.choice(ITEMS))
    return {"question": question, "answer": " ".join(steps) + f"\n#### {result}"}


def arith_split(split: str, size: int | None = None) -> list[dict[str, str]]:
    """The ``split`` (train / validation / test) as {"question", "answer"} records, deterministic."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_SEEDS)}, got {split!r}")
    size = SPLIT_SIZES[split] if size is None else size
    held_out = set()
    if split == "train":
        held_out = {r["question"] for s in ("validation", "test") for r in arith_split(s)}
    rng = random.Random(f"dlm-arith-v{GENERATOR_VERSION}-{SPLIT_SEEDS[split]}")
    seen, records = set(held_out), []
    while len(records) < size:
        r = problem(rng)
        if r["question"] not in seen:
            seen.add(r["question"])
            records.append(r)
    return records


def sft_record(record: dict[str, str]) -> dict[str, str]:
    """A problem as a (prompt, answer) SFT record for ``dlm train --task arith``."""
    return {"prompt": f"{INSTRUCTION}\n\n{record['question']}", "answer": record["answer"]}
