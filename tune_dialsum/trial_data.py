"""A trial's data: the splits read once per worker process, tokenized once per experiment.

Trials of one experiment that share a tokenizer, a dialogue format and lengths tokenize the same
rows: the first stores them under ``ExperimentContext.cache_dir``, the others load them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

from tune_dialsum.contract import TOKENIZED_CACHE
from tune_dialsum.data import DialogueDataLoader, training_splits
from tune_dialsum.experiment_context import NODE_LOCAL, ExperimentContext
from tune_dialsum.models import tokenizer_fingerprint


@functools.lru_cache(maxsize=4)
def _load_splits(data_path, dialogue_column, summary_column, id_column):
    """Read the data once per worker process, not once per trial."""
    return DialogueDataLoader(data_path, dialogue_column, summary_column, id_column).load_splits()


def load_splits(context: ExperimentContext) -> dict:
    """Every split of the experiment's data, as read (and cleaned) once per process."""
    return _load_splits(
        context.data.path, context.data.dialogue_column, context.data.summary_column, context.data.id_column
    )


def training_frames(context: ExperimentContext):
    train_df, val_df = training_splits(
        load_splits(context),
        context.data.validation_split,
        context.seed,
        context.data.max_train_samples,
        context.data.max_eval_samples,
    )
    # Longest first: generation batches of similar length pad less, and a too-long batch fails at once.
    val_df = val_df.iloc[val_df["dialogue"].str.len().argsort()[::-1]]
    return train_df, val_df


def prepared_datasets(trainer, context: ExperimentContext):
    """Tokenized train/validation sets, tokenized once per experiment and shared through ``cache_dir``."""
    from datasets import DatasetDict

    if context.cache_dir is None:
        train_df, val_df = training_frames(context)
        return trainer.load_and_prepare_data(train_df, val_df=val_df)
    # What decides the tokenized rows: the files read (by size and mtime), which rows of them, the
    # tokenizer itself (not only its name) and how inputs are built.
    identity = {
        **trainer.recipe,
        "tokenizer": tokenizer_fingerprint(trainer.tokenizer),
        "data": DialogueDataLoader(context.data.path).fingerprint(("train", "validation")),
        "rows": asdict(context.data),  # which files, columns and how many rows of them
        "seed": context.seed,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if context.cache_dir == NODE_LOCAL:
        from tune_dialsum.models import cache_dir

        path = cache_dir() / TOKENIZED_CACHE / key
    else:
        path = Path(context.cache_dir) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    if (path / "dataset_dict.json").is_file():
        return DatasetDict.load_from_disk(str(path))
    train_df, val_df = training_frames(context)
    dataset_dict = trainer.load_and_prepare_data(train_df, val_df=val_df)
    staging = path.with_name(f".{key}-{uuid.uuid4().hex}")
    dataset_dict.save_to_disk(str(staging))
    try:
        staging.rename(path)
    except OSError:  # another trial stored the same datasets first
        shutil.rmtree(staging, ignore_errors=True)
    return dataset_dict
