"""What a search chose, as recorded in the experiment: the checkpoint (selection.json) and its decoding
(decoding.json). Read by the export, the analysis, the report and the summary; written by the stages
that choose (selection.py, decoding.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from tune_dialsum.atomic import atomic_write_text
from tune_dialsum.contract import DECODING_FILE, SELECTION_FILE

BASELINE = -1  # the trial number of a baseline decoding record (a checkpoint's training decoding, not a trial)


def read_selection(experiment_dir: Path) -> dict | None:
    """What selection.json holds: the re-scored candidates and the one chosen; None where none was written."""
    path = Path(experiment_dir) / SELECTION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def chosen_decoding(directory: Path) -> tuple[str, dict] | None:
    """(checkpoint label, generate() settings) the decoding stage in ``directory`` chose; None where it chose none."""
    document = read_decoding(directory)
    chosen = (document or {}).get("chosen")
    if not chosen:
        return None
    wanted = (chosen["number"], chosen["checkpoint"])
    record = next((r for r in document["records"] if (r["number"], r["checkpoint"]) == wanted), None)
    return None if record is None else (record["checkpoint"], record["settings"])


def forget_choice(directory: Path) -> None:
    """Mark decoding.json as choosing nothing (the export no longer uses what an earlier run chose)."""
    document = read_decoding(directory)
    if document is not None and document.get("chosen") is not None:
        atomic_write_text(Path(directory) / DECODING_FILE, json.dumps({**document, "chosen": None}, indent=2))


def read_decoding(directory: Path) -> dict | None:
    """What decoding.json in ``directory`` holds; None where the stage has not run there."""
    path = Path(directory) / DECODING_FILE
    return json.loads(path.read_text()) if path.is_file() else None
