"""Text cleaning shared by every split and every source.

The real corpora carry quirks that silently hurt training if left in: SAMSum
uses CRLF line ends and has a BOM, a left-to-right mark and zero-width joiners
inside dialogues; both corpora have leading/trailing whitespace and tabs.
"""

from __future__ import annotations

import logging
import re

import pandas as pd

logger = logging.getLogger(__name__)

# BOM, zero-width space/non-joiner/joiner, word joiner, and the bidi marks and
# embeddings: none of them is visible, all of them become tokenizer noise.
_INVISIBLE = re.compile("[\ufeff\u200b\u200c\u200d\u2060\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_HORIZONTAL_SPACE = re.compile(r"[ \t\u00a0]+")


def clean_text(text: object) -> str:
    """Normalise one dialogue or summary.

    Line ends become ``\\n``, invisible characters are removed, runs of spaces
    and tabs collapse to one space, and each line and the whole text are
    stripped. Missing values (None, NaN) become the empty string.
    """
    if text is None or (isinstance(text, float) and text != text):
        return ""
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    lines = (_HORIZONTAL_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def clean_frame(frame: pd.DataFrame, text_columns: list[str], source: str) -> pd.DataFrame:
    """Clean ``text_columns`` and drop rows where any of them ends up empty.

    The number of dropped rows is logged as a warning naming ``source``, so a
    dataset that loses rows never does so silently.
    """
    frame = frame.copy()
    for column in text_columns:
        frame[column] = frame[column].map(clean_text)
    empty = frame[text_columns].eq("").any(axis=1)
    if empty.any():
        logger.warning(
            "%s: dropped %d of %d rows with an empty %s",
            source,
            int(empty.sum()),
            len(frame),
            " or ".join(text_columns),
        )
        frame = frame[~empty]
    return frame.reset_index(drop=True)
