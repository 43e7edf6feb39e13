"""Which rows train and which rows score: one function, used by the search, ``train`` and the trainer API.

Where a corpus has no validation split, part of train is held out; the rows held out depend only on
the fraction and the seed, so a search, ``train --seed S`` and ``load_and_prepare_data(seed=S)`` hold
out the same rows.
"""

from __future__ import annotations

import pandas as pd


def hold_out(train_df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, held out): ``fraction`` of ``train_df`` (at least one row), drawn with ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be between 0 and 1 (exclusive) but got {fraction}")
    held = train_df.sample(n=max(1, round(len(train_df) * fraction)), random_state=seed)
    return train_df.drop(held.index), held


def training_splits(
    splits: dict[str, pd.DataFrame | None],
    validation_split: float,
    seed: int,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) from the splits a corpus has: the first ``max_train_samples`` of train, the
    validation split (or rows held out of train) cut to its first ``max_eval_samples``."""
    train_df, val_df = splits["train"], splits.get("validation")
    if max_train_samples:
        train_df = train_df.head(max_train_samples)
    if val_df is None:
        train_df, val_df = hold_out(train_df, validation_split, seed)
    if max_eval_samples:
        val_df = val_df.head(max_eval_samples)
    return train_df, val_df
