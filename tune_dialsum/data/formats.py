"""Dialogue formats: how a dialogue is written out before tokenization.

Two turn styles occur in the real data, ``Name: text`` (SAMSum) and
``#Person1#: text`` (DialogSum). A line that does not start with a speaker
continues the turn before it; a speakerless first line is a turn of its own.

- ``standard``: one ``Speaker: text`` line per turn, whitespace normalised.
- ``turns``: the same with an explicit, numbered turn marker, ``[T1] Speaker: text``.
- ``compact``: the messages only, speakers dropped, joined on one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tune_dialsum.errors import UsageError

DIALOGUE_FORMATS = ("standard", "turns", "compact")

# DialogSum tags (#Person1#, also the mis-cased #PErson2#) or a short name that
# starts with a letter: "Anna", "Mr. Smith", "Mary-Jane O'Neil".
_SPEAKER_LINE = re.compile(
    r"^(?P<speaker>#person\d+#|[^\W\d_][\w.'\- ]{0,29}?)\s*:\s?(?P<text>.*)$",
    re.IGNORECASE,
)
_PERSON_TAG = re.compile(r"^#person(\d+)#$", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Turn:
    speaker: str | None
    text: str


def _normalise_speaker(speaker: str) -> str:
    tag = _PERSON_TAG.match(speaker)
    if tag:
        return f"#Person{tag.group(1)}#"
    return _SPACES.sub(" ", speaker).strip()


def parse_turns(dialogue: str) -> list[Turn]:
    """Split a dialogue into turns; see the module docstring for the rules."""
    turns: list[Turn] = []
    for raw_line in dialogue.splitlines():
        line = _SPACES.sub(" ", raw_line).strip()
        if not line:
            continue
        match = _SPEAKER_LINE.match(line)
        if match:
            turns.append(Turn(_normalise_speaker(match["speaker"]), match["text"].strip()))
        elif turns:
            previous = turns[-1]
            turns[-1] = Turn(previous.speaker, f"{previous.text} {line}".strip())
        else:
            turns.append(Turn(None, line))
    return turns


def check_dialogue_format(dialogue_format: str) -> str:
    """Return ``dialogue_format`` if it is known, else raise a UsageError naming the choices."""
    if dialogue_format not in DIALOGUE_FORMATS:
        raise UsageError(f"unknown dialogue format {dialogue_format!r}: use one of {', '.join(DIALOGUE_FORMATS)}")
    return dialogue_format


def format_dialogue(dialogue: str, dialogue_format: str = "standard") -> str:
    """Write ``dialogue`` out in ``dialogue_format`` (one of DIALOGUE_FORMATS)."""
    check_dialogue_format(dialogue_format)
    turns = parse_turns(dialogue)
    if dialogue_format == "compact":
        return " ".join(turn.text for turn in turns if turn.text)
    lines = [f"{turn.speaker}: {turn.text}" if turn.speaker else turn.text for turn in turns]
    if dialogue_format == "turns":
        lines = [f"[T{i}] {line}" for i, line in enumerate(lines, 1)]
    return "\n".join(lines)
