"""Loading, cleaning and formatting dialogue-summarization data."""

from tune_dialsum.data.cleaning import clean_text
from tune_dialsum.data.formats import DIALOGUE_FORMATS, format_dialogue, parse_turns
from tune_dialsum.data.loading import DialogueDataLoader
from tune_dialsum.data.splits import hold_out, training_splits

__all__ = [
    "DIALOGUE_FORMATS",
    "DialogueDataLoader",
    "clean_text",
    "format_dialogue",
    "hold_out",
    "parse_turns",
    "training_splits",
]
