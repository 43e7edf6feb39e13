import pytest

from tune_dialsum.data.formats import DIALOGUE_FORMATS, Turn, format_dialogue, parse_turns
from tune_dialsum.errors import UsageError

SAMSUM_STYLE = "Amanda: I baked  cookies. Do you want some?\nJerry: Sure!\nAmanda: I'll bring you tomorrow :-)"
DIALOGSUM_STYLE = "#Person1#: Hi, Mr. Smith.\n #PErson2#: Hello, doctor.\n#Person1#: Why are you here?"


def test_samsum_turns_are_parsed_with_speakers():
    assert parse_turns(SAMSUM_STYLE) == [
        Turn("Amanda", "I baked cookies. Do you want some?"),
        Turn("Jerry", "Sure!"),
        Turn("Amanda", "I'll bring you tomorrow :-)"),
    ]


def test_dialogsum_tags_are_normalised_including_miscased_ones():
    assert [t.speaker for t in parse_turns(DIALOGSUM_STYLE)] == ["#Person1#", "#Person2#", "#Person1#"]


def test_a_line_without_speaker_continues_the_previous_turn():
    turns = parse_turns("Anna: first line\nsecond line\nTom: ok")
    assert turns == [Turn("Anna", "first line second line"), Turn("Tom", "ok")]


def test_a_leading_line_without_speaker_is_its_own_turn():
    assert parse_turns("hello all\nAnna: hi") == [Turn(None, "hello all"), Turn("Anna", "hi")]


def test_a_colon_only_turn_does_not_become_a_speaker():
    assert parse_turns("Anna: hi\n:") == [Turn("Anna", "hi :")]


def test_urls_and_times_are_not_mistaken_for_speakers():
    turns = parse_turns("Anna: see http://example.com at 10:30")
    assert turns == [Turn("Anna", "see http://example.com at 10:30")]


@pytest.mark.parametrize("dialogue", [SAMSUM_STYLE, DIALOGSUM_STYLE])
def test_standard_keeps_one_speaker_line_per_turn(dialogue):
    lines = format_dialogue(dialogue, "standard").split("\n")
    assert len(lines) == 3 and all(": " in line for line in lines)
    assert "  " not in format_dialogue(dialogue, "standard")


@pytest.mark.parametrize("dialogue", [SAMSUM_STYLE, DIALOGSUM_STYLE])
def test_turns_numbers_every_turn(dialogue):
    lines = format_dialogue(dialogue, "turns").split("\n")
    assert [line.split(" ", 1)[0] for line in lines] == ["[T1]", "[T2]", "[T3]"]


def test_compact_drops_speakers():
    assert format_dialogue(SAMSUM_STYLE, "compact") == (
        "I baked cookies. Do you want some? Sure! I'll bring you tomorrow :-)"
    )
    assert "#Person" not in format_dialogue(DIALOGSUM_STYLE, "compact")


def test_every_format_is_known_and_unknown_ones_are_refused():
    assert DIALOGUE_FORMATS == ("standard", "turns", "compact")
    with pytest.raises(UsageError, match="unknown dialogue format 'fancy'.*standard, turns, compact"):
        format_dialogue(SAMSUM_STYLE, "fancy")
