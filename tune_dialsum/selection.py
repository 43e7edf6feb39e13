"""Choosing the model to export without the winner's curse, and scoring it on data it was not chosen on.

ASHA ranks trials on a validation *subset* (cheap, noisy): the maximum over dozens of (trial,
report) scores on a few hundred examples is an optimistic figure. So the ``top_k`` checkpoints by
subset score are re-scored on the whole validation split, and the best of those by the full score
is exported. Where the data has a test split, the exported model is scored on it: that is the
figure a user can expect, and the only one reported as the model's; validation figures are
labelled as used for selection.

Scoring runs as Ray tasks with a trial's resources (a GPU where trials had one), several at once,
reading each model from the store that every node reaches.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tune_dialsum.contract import SELECTION_FILE, score_key
from tune_dialsum.export import CheckpointRecord, trial_decoding
from tune_dialsum.space_schema import ResourcesSection
from tune_dialsum.storage import download, is_uri
from tune_dialsum.trainable import ExperimentSettings, load_splits, training_frames


@dataclass
class Candidate:
    record: CheckpointRecord
    subset: float  # the objective on the validation subset ASHA ranked on
    full: dict  # every score on the whole validation split

    def as_dict(self, metric: str) -> dict:
        return {
            "trial_id": self.record.trial_id,
            "step": self.record.step,
            "subset": self.subset,
            "full_validation": self.full.get(score_key(metric)),
        }


def top_by_subset(records: list[CheckpointRecord], metric: str, mode: str, k: int) -> list[CheckpointRecord]:
    """The ``k`` best checkpoints by their subset score (ties: the earlier step)."""
    key, sign = score_key(metric), 1 if mode == "max" else -1
    scored = [r for r in records if math.isfinite(r.scores.get(key, math.nan))]
    return sorted(scored, key=lambda r: (-sign * r.scores[key], r.step))[:k]


def score_model(
    model_location: str,
    settings: ExperimentSettings,
    split: str,
    generation: dict | None = None,
    max_examples: int | None = None,
) -> dict:
    """ROUGE of a model (a checkpoint or an export, a path or a URI) on a whole split of the experiment's data.

    ``validation`` is the whole validation split (or the rows a search holds out of train), or its
    first ``max_examples``; ``test`` the test split. Decoding is ``generation``, else the model's
    generation config. Also measured: the summaries' mean length (words and tokens) and the seconds
    decoding took per summary (the model loaded, the data in memory).
    """
    import time

    from tune_dialsum.inference import DialogueSummarizer
    from tune_dialsum.metrics import compute_rouge

    if split == "validation":
        subset = dataclasses.replace(settings.data, max_eval_samples=max_examples)
        _, frame = training_frames(dataclasses.replace(settings, data=subset))
    else:
        frame = load_splits(settings)[split]
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = download(model_location, Path(scratch)) if is_uri(model_location) else model_location
        summarizer = DialogueSummarizer(model_dir)
        clock = time.perf_counter()
        predictions = summarizer.summarize(list(frame["dialogue"]), **(generation or {}))
        seconds = time.perf_counter() - clock
        encoded = summarizer.tokenizer(predictions, add_special_tokens=False)["input_ids"] if predictions else []
        tokens = [len(ids) for ids in encoded]
    scores = compute_rouge(predictions, list(frame["summary"]))
    words = [len(p.split()) for p in predictions]
    count = max(1, len(predictions))
    return {
        "examples": len(frame),
        "mean_words": sum(words) / count,
        "mean_tokens": sum(tokens) / count,
        "seconds_per_summary": seconds / count,
        **scores,
    }


def remote_scorer(resources: ResourcesSection):
    """:func:`score_model` as a Ray task with the resources of one of a trial's workers (one process)."""
    import ray

    return ray.remote(score_model).options(num_cpus=resources.cpus_per_worker, num_gpus=resources.gpus_per_worker)


def rescore(
    candidates: list[CheckpointRecord], locations: list[str], settings: ExperimentSettings, resources: ResourcesSection
) -> list[Candidate]:
    """Each candidate's scores on the whole validation split, decoded as its trial was scored; in parallel."""
    import ray

    scorer = remote_scorer(resources)
    futures = [
        scorer.remote(location, settings, "validation", trial_decoding(record.snapshot.get("config", {})))
        for record, location in zip(candidates, locations, strict=True)
    ]
    key = score_key(settings.objective.metric)
    return [
        Candidate(record, record.scores[key], full) for record, full in zip(candidates, ray.get(futures), strict=True)
    ]


def ranked(candidates: list[Candidate], metric: str, mode: str) -> list[Candidate]:
    """The candidates best first by their full-validation score (ties: the better subset score)."""
    key, sign = score_key(metric), 1 if mode == "max" else -1
    return sorted(candidates, key=lambda c: (sign * c.full[key], sign * c.subset), reverse=True)


def choose(candidates: list[Candidate], metric: str, mode: str) -> Candidate:
    """The best candidate by its full-validation score (ties: the better subset score)."""
    return ranked(candidates, metric, mode)[0]


def score_on_test(
    models: list[tuple[str, dict | None]], settings: ExperimentSettings, resources: ResourcesSection
) -> list | None:
    """Each (model location, decoding or None for its generation config)'s scores on the test split, in
    parallel; None where the data has no test split."""
    import ray

    if load_splits(settings).get("test") is None:
        return None
    scorer = remote_scorer(resources)
    return ray.get([scorer.remote(location, settings, "test", decoding) for location, decoding in models])


def write_selection(
    experiment_dir: Path, chosen: Candidate, candidates: list[Candidate], metric: str, mode: str
) -> Path:
    path = experiment_dir / SELECTION_FILE
    path.write_text(
        json.dumps(
            {
                "metric": metric,
                "mode": mode,
                "chosen": chosen.as_dict(metric),
                "candidates": [c.as_dict(metric) for c in candidates],
            },
            indent=2,
        )
    )
    return path


def read_selection(experiment_dir: Path) -> dict | None:
    path = experiment_dir / SELECTION_FILE
    return json.loads(path.read_text()) if path.is_file() else None
