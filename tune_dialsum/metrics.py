"""ROUGE as pure functions on strings.

``evaluate.load("rouge")`` fetches its script from the hub, so it cannot be
used offline; this module calls rouge-score directly, the library that script
wraps. Scores are F1 with Porter stemming, the plain mean over examples, between 0 and 1.

A mean over a hundred greedy summaries moves by several points between two checkpoints that are
equally good, so every figure that decides something carries its noise: a percentile bootstrap
over examples (:func:`bootstrap_interval`) and, for two models scored on the same examples, the
paired bootstrap of their difference (:func:`paired_difference`). Resampling is seeded: the same
scores give the same interval.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tune_dialsum.contract import ROUGE_KEYS

# A sentence ends at . ! or ? followed by whitespace; this is what nltk's punkt
# is used for in run_summarization.py, without its download.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> str:
    """Put each sentence of ``text`` on its own line, as ROUGE-Lsum expects."""
    return "\n".join(s for s in (part.strip() for part in _SENTENCE_END.split(text.strip())) if s)


def rouge_per_example(
    predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True
) -> list[dict[str, float]]:
    """ROUGE F1 of each (prediction, reference) pair."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; they must pair up")
    # Imported here: rouge-score's stemmer pulls in all of nltk, scipy with it (about a second), which every
    # command, the search's driver and the intervals below would otherwise pay without scoring anything.
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=use_stemmer)
    return [
        {key: score.fmeasure for key, score in scorer.score(split_sentences(ref), split_sentences(pred)).items()}
        for pred, ref in zip(predictions, references, strict=True)
    ]


def compute_rouge(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F1 over examples; all 0.0 for no examples."""
    per_example = rouge_per_example(predictions, references, use_stemmer)
    if not per_example:
        return dict.fromkeys(ROUGE_KEYS, 0.0)
    return {key: sum(s[key] for s in per_example) / len(per_example) for key in ROUGE_KEYS}


CONFIDENCE = 0.95
RESAMPLES = 2000


def _resampled_means(columns: Sequence[Sequence[float]], resamples: int, seed: int):
    """Means of each column over the same ``resamples`` draws of example indices (with replacement)."""
    import numpy as np

    values = np.asarray(columns, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.shape[1], size=(resamples, values.shape[1]))
    return values[:, picks].mean(axis=2)  # (columns, resamples)


def _percentiles(samples, confidence: float) -> tuple[float, float]:
    import numpy as np

    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_interval(
    per_example: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``per_example`` (one score per example)."""
    if len(per_example) == 0:
        return (0.0, 0.0)
    return _percentiles(_resampled_means([per_example], resamples, seed)[0], confidence)


@dataclass(frozen=True)
class Difference:
    """Mean of ``a - b`` over paired examples and its bootstrap interval."""

    mean: float
    low: float
    high: float

    @property
    def within_noise(self) -> bool:
        """The interval holds 0: on these examples neither model is shown to be better."""
        return self.low <= 0.0 <= self.high

    def as_list(self) -> list[float]:
        return [round(self.mean, 5), round(self.low, 5), round(self.high, 5)]


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Difference:
    """The paired bootstrap of ``mean(a) - mean(b)``: both resampled on the same examples each draw."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} scores against {len(b)}: a paired difference needs the same examples")
    if len(a) == 0:
        return Difference(0.0, 0.0, 0.0)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    low, high = bootstrap_interval(diffs, confidence, resamples, seed)
    return Difference(sum(diffs) / len(diffs), low, high)


def is_degenerate(predictions: Sequence[str]) -> bool:
    """Greedy output that does not summarize: every summary empty, or one summary for every input.

    Its ROUGE measures how close one fixed sentence is to the references, not a model: it is not
    ranked on ROUGE.
    """
    texts = [p.strip() for p in predictions]
    if not texts:
        return False
    return not any(texts) or (len(texts) > 1 and len(set(texts)) == 1)


def with_intervals(per_example: list[dict[str, float]], keys: Sequence[str] = ROUGE_KEYS, seed: int = 0) -> dict:
    """``{key: [low, high]}``: the 95% bootstrap interval of each mean score."""
    return {key: [round(v, 5) for v in bootstrap_interval([s[key] for s in per_example], seed=seed)] for key in keys}


class RougeMetric:
    """Stands in for ``evaluate.load("rouge")``: same ``compute`` call, no download.

    The training guide's custom-metrics recipe calls
    ``trainer.metric.compute(predictions=..., references=..., use_stemmer=True)``.
    """

    def compute(self, predictions, references, use_stemmer: bool = True, **_ignored) -> dict[str, float]:
        return compute_rouge(list(predictions), list(references), use_stemmer=use_stemmer)
