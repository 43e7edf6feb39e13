import random

import pytest
from rouge_score import rouge_scorer

from tune_dialsum.contract import ROUGE_KEYS
from tune_dialsum.metrics import RougeMetric, compute_rouge, split_sentences

WORDS = "anna tom will meet at the cafe on friday bring cake running late because of traffic".split()


def _random_texts(rng, count):
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 20))).capitalize() + "." for _ in range(count)]


def test_compute_rouge_equals_rouge_score_averaged_per_example():
    rng = random.Random(7)
    predictions, references = _random_texts(rng, 50), _random_texts(rng, 50)
    predictions[3] = "Anna will come. She brings cake! Then they eat."
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    expected = {key: 0.0 for key in ROUGE_KEYS}
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref.replace(". ", ".\n"), pred.replace(". ", ".\n").replace("! ", "!\n"))
        for key in ROUGE_KEYS:
            expected[key] += scores[key].fmeasure / len(predictions)
    result = compute_rouge(predictions, references)
    assert set(result) == set(ROUGE_KEYS)
    for key in ROUGE_KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-9)


def test_identical_texts_score_one_and_disjoint_texts_zero():
    assert compute_rouge(["Anna meets Tom."], ["Anna meets Tom."]) == dict.fromkeys(ROUGE_KEYS, 1.0)
    assert compute_rouge(["cake"], ["traffic"]) == dict.fromkeys(ROUGE_KEYS, 0.0)


def test_stemming_matches_inflected_words():
    assert (
        compute_rouge(["Anna is running"], ["Anna runs"])["rouge1"]
        > compute_rouge(["Anna is running"], ["Anna runs"], use_stemmer=False)["rouge1"]
    )


def test_rouge_lsum_uses_sentence_splits():
    assert split_sentences("One. Two!  Three? four") == "One.\nTwo!\nThree?\nfour"
    prediction, reference = "b c. a b.", "a b. b c."
    scores = compute_rouge([prediction], [reference])
    assert scores["rougeLsum"] == 1.0 and scores["rougeL"] < 1.0


def test_mismatched_lengths_are_an_error_and_empty_input_scores_zero():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_rouge(["a", "b"], ["a"])
    assert compute_rouge([], []) == dict.fromkeys(ROUGE_KEYS, 0.0)


def test_rouge_metric_offers_the_evaluate_compute_call():
    result = RougeMetric().compute(predictions=["Anna meets Tom."], references=["Anna meets Tom."], use_stemmer=True)
    assert result["rougeL"] == 1.0
