"""ROUGE-1/2/L with Google's ``rouge-score``: Porter stemmer on, F-measure x 100, mean over samples.

As in DSL-LLaDA's ``eval_summarization.py``: ``scorer.score(reference, prediction)`` per sample,
an empty prediction scores 0, the corpus score is the mean of the per-sample F-measures.
"""

from __future__ import annotations

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_per_sample(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    out = []
    for pred, ref in zip(predictions, references):
        if not pred.strip():
            out.append({k: 0.0 for k in ROUGE_TYPES})
            continue
        scores = scorer.score(ref, pred)
        out.append({k: 100.0 * scores[k].fmeasure for k in ROUGE_TYPES})
    return out


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure x 100 over the samples."""
    per = rouge_per_sample(predictions, references)
    n = max(1, len(per))
    return {k: sum(p[k] for p in per) / n for k in ROUGE_TYPES}
