"""Reading dialogue-summarization splits from a directory, a saved dataset or the hub.

A data directory holds one file per split, named for the split: ``train``,
``validation`` (also ``val`` or ``dev``) and ``test``, each as ``.csv``,
``.json`` (an array or JSON Lines), ``.jsonl``, ``.jsonl.gz``, ``.json.gz`` or
``.parquet``. A directory written by ``datasets.DatasetDict.save_to_disk``
works too, and so does a hub dataset name where the hub is reachable.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from pathlib import Path

import pandas as pd

from tune_dialsum.data.cleaning import clean_frame
from tune_dialsum.errors import DataError

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "val", "valid", "dev"),
    "test": ("test",),
}
SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".csv", ".parquet")


def _open_text(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    # utf-8-sig: a BOM at the very start of a file is an encoding mark, not data.
    return opener(path, "rt", encoding="utf-8-sig", newline="")


def _read_json(path: Path) -> list[dict]:
    with _open_text(path) as handle:
        text = handle.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
        if not all(isinstance(r, dict) for r in records):
            raise DataError(f"{path}: a JSON array of objects was expected, one per example")
        return records
    records = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}: line {number} is not valid JSON ({err.msg}); each line must hold one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records


def read_split_file(path: Path) -> pd.DataFrame:
    """Read one split file into a DataFrame of strings (no type guessing)."""
    try:
        if path.name.endswith(".parquet"):
            frame = pd.read_parquet(path)
        elif path.name.endswith((".csv", ".csv.gz")):
            with _open_text(path) as handle:
                frame = pd.read_csv(handle, dtype=str, keep_default_na=False)
        else:
            frame = pd.DataFrame.from_records(_read_json(path))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 (bad byte at offset {err.start}); re-encode the file as UTF-8") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: cannot parse CSV: {str(err).strip()}") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    return frame


def _find_split_file(data_dir: Path, split: str) -> Path | None:
    for alias in SPLIT_ALIASES[split]:
        for suffix in SUFFIXES:
            candidate = data_dir / f"{alias}{suffix}"
            if candidate.is_file():
                return candidate
    return None


class DialogueDataLoader:
    """Load the train / validation / test splits of a dialogue-summarization set.

    ``load_train_test_data()`` returns ``(train_df, test_df)`` as in the
    training guide; ``load_train_test_data(with_validation=True)`` returns
    ``(train_df, validation_df, test_df)``; ``load_splits()`` returns every
    split found as a dict. A split that does not exist is ``None``.

    Every frame has the columns ``id``, ``dialogue`` and ``summary`` (renamed
    from ``dialogue_col`` / ``summary_col`` / ``id_col`` where those differ),
    plus whatever other columns the source has. Ids are strings.
    """

    def __init__(
        self,
        data_dir: str | Path = "data",
        dialogue_col: str = "dialogue",
        summary_col: str = "summary",
        id_col: str = "id",
    ) -> None:
        self.data_dir = str(data_dir)
        self.dialogue_col = dialogue_col
        self.summary_col = summary_col
        self.id_col = id_col

    # -- public API -----------------------------------------------------------------
    def load_train_test_data(self, with_validation: bool = False):
        splits = self.load_splits()
        if with_validation:
            return splits["train"], splits["validation"], splits["test"]
        return splits["train"], splits["test"]

    def load_splits(self) -> dict[str, pd.DataFrame | None]:
        raw = self._read_raw_splits()
        if raw.get("train") is None:
            raise DataError(
                f"{self.data_dir}: no train split; expected a file named train"
                f"{{{','.join(SUFFIXES)}}} or a saved dataset with a 'train' split"
            )
        return {
            split: None if frame is None else self._prepare(frame, split)
            for split, frame in ((s, raw.get(s)) for s in SPLIT_ALIASES)
        }

    def fingerprint(self, splits: tuple[str, ...] = tuple(SPLIT_ALIASES)) -> str:
        """A short hash that changes when the files behind ``splits`` change (names, sizes, mtimes).

        Anything derived from the data (a tokenizer trained on it, tokenized datasets) is cached
        under this, so editing the data in place never reuses what was built from the old files.
        """
        path = Path(self.data_dir).expanduser()
        if path.is_dir() and (path / "dataset_dict.json").is_file():
            files = sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_dir():
            files = [f for f in (_find_split_file(path, split) for split in splits) if f is not None]
        else:  # a hub dataset: its name is all there is to go by
            files = []
        identity = [str(path.resolve()) if path.exists() else self.data_dir, *splits]
        for file in files:
            stat = file.stat()
            identity.append(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}")
        return hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]

    # -- reading --------------------------------------------------------------------
    def _read_raw_splits(self) -> dict[str, tuple[pd.DataFrame, str] | None]:
        path = Path(self.data_dir).expanduser()
        if path.is_dir():
            if (path / "dataset_dict.json").is_file():
                return self._read_saved_dataset(path)
            return {
                split: (read_split_file(file), str(file)) if file else None
                for split, file in ((s, _find_split_file(path, s)) for s in SPLIT_ALIASES)
            }
        if path.exists():
            raise DataError(f"{self.data_dir}: is a file; pass the directory that holds the splits")
        if "/" in self.data_dir and not self.data_dir.startswith((".", "/", "~")):
            return self._read_hub_dataset(self.data_dir)
        raise DataError(
            f"{self.data_dir}: no such directory; pass a directory holding train/validation/test "
            "files (for the bundled demo data: data)"
        )

    def _read_saved_dataset(self, path: Path):
        import datasets

        dataset = datasets.load_from_disk(str(path))
        return self._from_dataset_dict(dataset, str(path))

    def _read_hub_dataset(self, name: str):
        import datasets

        try:
            dataset = datasets.load_dataset(name)
        except Exception as err:  # the hub raises many types; all mean "not available"
            raise DataError(
                f"{name}: not a local directory and could not be loaded from the hub "
                f"({type(err).__name__}); download it and pass its directory instead"
            ) from None
        return self._from_dataset_dict(dataset, name)

    def _from_dataset_dict(self, dataset, source: str):
        found = {}
        for split, aliases in SPLIT_ALIASES.items():
            name = next((a for a in aliases if a in dataset), None)
            found[split] = (dataset[name].to_pandas(), f"{source}[{name}]") if name else None
        return found

    # -- shaping ----------------------------------------------------------------------
    def _prepare(self, item: tuple[pd.DataFrame, str], split: str) -> pd.DataFrame:
        frame, source = item
        if frame.empty:
            raise DataError(f"{source}: the {split} split is empty; it needs at least one example")
        for column, option in ((self.dialogue_col, "dialogue_col"), (self.summary_col, "summary_col")):
            if column not in frame.columns:
                raise DataError(
                    f"{source}: no column {column!r} (found: {', '.join(map(str, frame.columns))}); "
                    f"set {option} to the right column name"
                )
        frame = frame.rename(columns={self.dialogue_col: "dialogue", self.summary_col: "summary"})
        if self.id_col in frame.columns:
            frame = frame.rename(columns={self.id_col: "id"})
            frame["id"] = frame["id"].astype(str)
        else:
            frame.insert(0, "id", [f"{split}_{i}" for i in range(len(frame))])
        frame = clean_frame(frame, ["dialogue", "summary"], source)
        if frame.empty:
            raise DataError(f"{source}: every row of the {split} split has an empty dialogue or summary")
        duplicated = frame["id"].duplicated()
        if duplicated.any():
            logger.warning(
                "%s: %d duplicate ids (first: %s)", source, duplicated.sum(), frame["id"][duplicated].iloc[0]
            )
        return frame
