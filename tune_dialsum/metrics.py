"""ROUGE as pure functions on strings.

``evaluate.load("rouge")`` fetches its script from the hub, so it cannot be
used offline; this module calls rouge-score directly, the library that script
wraps. Scores are F1 with Porter stemming, the plain mean over examples
(deterministic: no bootstrap resampling), between 0 and 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rouge_score import rouge_scorer

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


class RougeMetric:
    """Stands in for ``evaluate.load("rouge")``: same ``compute`` call, no download.

    The training guide's custom-metrics recipe calls
    ``trainer.metric.compute(predictions=..., references=..., use_stemmer=True)``.
    """

    def compute(self, predictions, references, use_stemmer: bool = True, **_ignored) -> dict[str, float]:
        return compute_rouge(list(predictions), list(references), use_stemmer=use_stemmer)
