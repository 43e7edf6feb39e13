"""Scoring a model (a checkpoint or an export, a path or a URI) on a whole split of an experiment's data.

Selection, the refit, the decoding stage and test scoring all score through here, as tasks
(executor.py: Ray tasks with a trial's resources, a GPU where trials had one, several at once),
reading each model from the store that every node reaches; and a trial that trained its whole budget
scores its last checkpoint through here in its own process (trainable.py).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from tune_dialsum import executor
from tune_dialsum.experiment_context import ExperimentContext
from tune_dialsum.locations import download, is_uri
from tune_dialsum.space_schema import ResourcesSection
from tune_dialsum.trial_data import load_splits, training_frames


def score_model(
    model_location: str,
    context: ExperimentContext,
    split: str,
    generation: dict | None = None,
    max_examples: int | None = None,
    per_example: bool = False,
) -> dict:
    """ROUGE of a model (a checkpoint or an export, a path or a URI) on a whole split of the experiment's data.

    ``validation`` is the whole validation split (or the rows a search holds out of train), or its
    first ``max_examples``; ``test`` the test split. Decoding is ``generation``, else the model's
    generation config. Also measured: each mean's 95% bootstrap interval (``intervals``), whether the
    output is degenerate, the summaries' mean length (words and tokens) and the seconds decoding took
    per summary (the model loaded, the data in memory). ``per_example``: each example's ROUGE too, under
    ``per_example`` (for paired comparisons; not for files).
    """
    import time

    from tune_dialsum.contract import ROUGE_KEYS
    from tune_dialsum.inference import DialogueSummarizer
    from tune_dialsum.metrics import is_degenerate, rouge_per_example, with_intervals

    if split == "validation":
        subset = dataclasses.replace(context.data, max_eval_samples=max_examples)
        _, frame = training_frames(dataclasses.replace(context, data=subset))
    else:
        frame = load_splits(context)[split]
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = download(model_location, Path(scratch)) if is_uri(model_location) else model_location
        summarizer = DialogueSummarizer(model_dir, trust_remote_code=context.trust_remote_code)
        clock = time.perf_counter()
        predictions = summarizer.summarize(list(frame["dialogue"]), **(generation or {}))
        seconds = time.perf_counter() - clock
        encoded = summarizer.tokenizer(predictions, add_special_tokens=False)["input_ids"] if predictions else []
        tokens = [len(ids) for ids in encoded]
    each = rouge_per_example(predictions, list(frame["summary"]))
    words = [len(p.split()) for p in predictions]
    count = max(1, len(predictions))
    scores = {
        "examples": len(frame),
        "mean_words": sum(words) / count,
        "mean_tokens": sum(tokens) / count,
        "seconds_per_summary": seconds / count,
        **{key: sum(e[key] for e in each) / count for key in ROUGE_KEYS},
        "intervals": with_intervals(each),
        "degenerate": is_degenerate(predictions),
    }
    if per_example:
        scores["per_example"] = {key: [e[key] for e in each] for key in ROUGE_KEYS}
    return scores


def scoring_tasks(resources: ResourcesSection):
    """Where :func:`score_model` runs: tasks with the resources of one of a trial's workers (one process)."""
    return executor.tasks(resources.cpus_per_worker, resources.gpus_per_worker)


def score_on_test(
    models: list[tuple[str, dict | None]], context: ExperimentContext, resources: ResourcesSection
) -> list | None:
    """Each (model location, decoding or None for its generation config)'s scores on the test split, in
    parallel; None where the data has no test split."""
    if load_splits(context).get("test") is None:
        return None
    tasks = scoring_tasks(resources)
    handles = [tasks.submit(score_model, location, context, "test", decoding) for location, decoding in models]
    return [tasks.result(handle) for handle in handles]
