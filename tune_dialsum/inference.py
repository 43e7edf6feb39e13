"""Inference with a trained or exported model, in the format it was trained with.

A model directory written by the trainer (``final_model``) or by export
(``best_model``) records in ``tune_dialsum.json`` how its inputs were built:
the dialogue format and the prefix. :class:`DialogueSummarizer` applies both,
so ``summarize`` feeds the model what it saw in training.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tune_dialsum.adapters import is_adapter
from tune_dialsum.contract import RECIPE_FILE
from tune_dialsum.data.cleaning import clean_text
from tune_dialsum.data.formats import format_dialogue
from tune_dialsum.errors import UsageError
from tune_dialsum.generation import one_length_limit


def read_recipe(model_dir: Path) -> dict:
    """The input recipe saved beside a model; the family defaults for a plain model directory."""
    recipe_file = model_dir / RECIPE_FILE
    if recipe_file.is_file():
        return json.loads(recipe_file.read_text())
    from tune_dialsum.models import family_of

    return {"dialogue_format": "standard", "prefix": family_of(str(model_dir)).prefix, "max_input_length": 512}


class DialogueSummarizer:
    """Summarise dialogues with a model directory: ``DialogueSummarizer(dir).summarize([...])``."""

    def __init__(
        self, model_dir: str | Path, device: str | None = None, batch_size: int = 16, trust_remote_code: bool = False
    ) -> None:
        import torch

        from tune_dialsum.models import load_model_and_tokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file() and not is_adapter(self.model_dir):
            raise UsageError(
                f"{self.model_dir}: not a model directory (no config.json); pass best_model or final_model"
            )
        self.recipe = read_recipe(self.model_dir)
        self.model, self.tokenizer = load_model_and_tokenizer(str(self.model_dir), trust_remote_code)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.batch_size = batch_size

    def model_input(self, dialogue: str) -> str:
        return self.recipe.get("prefix", "") + format_dialogue(clean_text(dialogue), self.recipe["dialogue_format"])

    def summarize(self, dialogues: Sequence[str], **generation) -> list[str]:
        """One summary per dialogue, in order; decoding settings come from the model's generation config."""
        import torch

        inputs = [self.model_input(d) for d in dialogues]
        # Longest first: batches of similar length pad less, and memory peaks at once, not at the end.
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]), reverse=True)
        summaries: list[str] = [""] * len(inputs)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            encoded = self.tokenizer(
                [inputs[i] for i in batch],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.recipe.get("max_input_length", 512),
            ).to(self.device)
            with torch.inference_mode(), one_length_limit(self.model.generation_config, generation):
                generated = self.model.generate(**encoded, **generation)
            for i, text in zip(batch, self.tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True):
                summaries[i] = text.strip()
        return summaries


def read_dialogues(path: Path | None, text: str | None = None) -> list[dict]:
    """Dialogues from a JSON Lines or CSV file (a ``dialogue`` column) or plain text (blank-line separated)."""
    import pandas as pd

    from tune_dialsum.data.loading import read_split_file

    if path is not None and path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")):
        frame = read_split_file(path)
        if "dialogue" not in frame.columns:
            raise UsageError(f"{path}: no 'dialogue' column (found: {', '.join(map(str, frame.columns))})")
        if "id" not in frame.columns:
            frame["id"] = [str(i) for i in range(len(frame))]
        return frame[["id", "dialogue"]].astype(str).to_dict("records")
    if text is None:
        text = path.read_text(encoding="utf-8")
    blocks = [b.strip() for b in text.replace("\r\n", "\n").split("\n\n")]
    return pd.DataFrame(
        {"id": [str(i) for i, b in enumerate(b for b in blocks if b)], "dialogue": [b for b in blocks if b]}
    ).to_dict("records")


def summary_lines(records: list[dict], summaries: list[str], jsonl: bool) -> list[str]:
    """What ``summarize`` writes: one ``{"id", "summary"}`` JSON object a line, or else one summary a line."""
    if jsonl:
        return [
            json.dumps({"id": r["id"], "summary": s}, ensure_ascii=False)
            for r, s in zip(records, summaries, strict=True)
        ]
    return [s.replace("\n", " ") for s in summaries]


def prediction_lines(ids: Iterable, references: Iterable[str], predictions: Sequence[str]) -> list[str]:
    """What ``evaluate`` writes: one ``{"id", "reference", "prediction"}`` JSON object a line."""
    return [
        json.dumps({"id": i, "reference": r, "prediction": p}, ensure_ascii=False)
        for i, r, p in zip(ids, references, predictions, strict=True)
    ]


@dataclass
class Evaluation:
    """A model's summaries of one data split, and their ROUGE against the references."""

    ids: list
    references: list[str]
    predictions: list[str]
    scores: dict[str, float]

    def lines(self) -> list[str]:
        return prediction_lines(self.ids, self.references, self.predictions)


def evaluate_split(
    model_dir: str | Path, data_dir: str, split: str, max_samples: int | None = None, batch_size: int = 16
) -> Evaluation:
    """Summarise ``split`` of ``data_dir`` (its first ``max_samples``) with a model and score it."""
    from tune_dialsum.data import DialogueDataLoader
    from tune_dialsum.metrics import compute_rouge

    frame = DialogueDataLoader(data_dir).load_splits()[split]
    if frame is None:
        raise UsageError(f"{data_dir}: no {split} split; pass --split train, validation or test")
    if max_samples:
        frame = frame.head(max_samples)
    predictions = DialogueSummarizer(model_dir, batch_size=batch_size).summarize(list(frame["dialogue"]))
    references = list(frame["summary"])
    return Evaluation(list(frame["id"]), references, predictions, compute_rouge(predictions, references))
