import gzip
import json
import logging

import pandas as pd
import pytest

from tests.conftest import BUNDLED_DATA, corpus_dir
from tune_dialsum import DialogueDataLoader
from tune_dialsum.data.cleaning import clean_text
from tune_dialsum.data.formats import format_dialogue
from tune_dialsum.errors import DataError

RECORDS = [
    {"id": "13728059-1", "dialogue": "Anna: hi\r\nTom: hello\r\n", "summary": "  Anna greets Tom.\r\n"},
    {
        "id": "13821722",
        "dialogue": "\ufeffAnna: photo <\u200efile_photo>\nTom: \U0001f468\u200d\U0001f469 nice",
        "summary": "Anna sends a photo.",
    },
    {"id": "13828807", "dialogue": "", "summary": "problem with visualization of the content"},
    {"id": "00000042", "dialogue": "Anna:\tleading tab  and  spaces ", "summary": "Anna talks."},
]


def _write_jsonl(path, records, opener=open):
    with opener(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def test_clean_text_handles_every_listed_quirk():
    assert clean_text("a\r\nb\rc") == "a\nb\nc"
    assert clean_text("\ufeffx\u200by\u200dz\u200e\u200f") == "xyz"
    assert clean_text("  a \t b  \n  c  ") == "a b\nc"
    assert clean_text(None) == "" and clean_text(float("nan")) == ""


def test_quirky_jsonl_is_cleaned_and_the_empty_row_dropped_with_a_warning(tmp_path, caplog):
    _write_jsonl(tmp_path / "train.jsonl", RECORDS)
    with caplog.at_level(logging.WARNING):
        train, test = DialogueDataLoader(tmp_path).load_train_test_data()
    assert test is None
    assert list(train["id"]) == ["13728059-1", "13821722", "00000042"]  # strings, leading zeros kept
    assert train.loc[0, "dialogue"] == "Anna: hi\nTom: hello"
    assert train.loc[0, "summary"] == "Anna greets Tom."
    assert "\ufeff" not in train.loc[1, "dialogue"] and "\u200e" not in train.loc[1, "dialogue"]
    assert train.loc[2, "dialogue"] == "Anna: leading tab and spaces"
    assert "dropped 1 of 4 rows" in caplog.text


@pytest.mark.parametrize("layout", ["jsonl.gz", "json-array", "json-lines", "csv", "parquet", "save_to_disk"])
def test_every_file_layout_loads_the_same_rows(tmp_path, layout):
    frame = pd.DataFrame(RECORDS[:2] + RECORDS[3:])
    if layout == "jsonl.gz":
        _write_jsonl(tmp_path / "train.jsonl.gz", frame.to_dict("records"), gzip.open)
    elif layout == "json-array":
        (tmp_path / "train.json").write_text(json.dumps(frame.to_dict("records")), encoding="utf-8")
    elif layout == "json-lines":
        _write_jsonl(tmp_path / "train.json", frame.to_dict("records"))
    elif layout == "csv":
        frame.to_csv(tmp_path / "train.csv", index=False)
    elif layout == "parquet":
        frame.to_parquet(tmp_path / "train.parquet")
    else:
        from datasets import Dataset, DatasetDict

        DatasetDict({"train": Dataset.from_pandas(frame)}).save_to_disk(str(tmp_path / "saved"))
        tmp_path = tmp_path / "saved"
    train = DialogueDataLoader(tmp_path).load_splits()["train"]
    assert list(train["id"]) == ["13728059-1", "13821722", "00000042"]
    assert train.loc[0, "dialogue"] == "Anna: hi\nTom: hello"


def test_validation_split_is_found_under_its_aliases(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", RECORDS[:1])
    _write_jsonl(tmp_path / "dev.jsonl", RECORDS[1:2])
    train, validation, test = DialogueDataLoader(tmp_path).load_train_test_data(with_validation=True)
    assert len(train) == 1 and list(validation["id"]) == ["13821722"] and test is None


def test_custom_column_names_are_renamed_and_missing_ids_generated(tmp_path):
    pd.DataFrame({"chat": ["A: x"], "gist": ["A says x."]}).to_csv(tmp_path / "train.csv", index=False)
    train = DialogueDataLoader(tmp_path, dialogue_col="chat", summary_col="gist").load_splits()["train"]
    assert list(train.columns) == ["id", "dialogue", "summary"] and train.loc[0, "id"] == "train_0"


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        DialogueDataLoader(tmp_path / "nope").load_splits()


def test_missing_train_split_is_a_clear_error(tmp_path):
    _write_jsonl(tmp_path / "test.jsonl", RECORDS[:1])
    with pytest.raises(DataError, match="no train split"):
        DialogueDataLoader(tmp_path).load_splits()


def test_missing_column_names_the_columns_found(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [{"id": "1", "text": "a", "summary": "b"}])
    with pytest.raises(DataError, match=r"no column 'dialogue' \(found: id, text, summary\); set dialogue_col"):
        DialogueDataLoader(tmp_path).load_splits()


def test_empty_split_is_a_clear_error(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(DataError, match="the train split is empty"):
        DialogueDataLoader(tmp_path).load_splits()


def test_split_whose_every_row_is_empty_is_a_clear_error(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [{"id": "1", "dialogue": " \r\n", "summary": "x"}])
    with pytest.raises(DataError, match="every row of the train split has an empty"):
        DialogueDataLoader(tmp_path).load_splits()


def test_non_utf8_file_names_the_file_and_the_fix(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b'{"id": "1", "dialogue": "caf\xe9", "summary": "x"}\n')
    with pytest.raises(DataError, match=r"train.jsonl: not UTF-8 .*re-encode"):
        DialogueDataLoader(tmp_path).load_splits()


def test_broken_json_line_names_the_line(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"id": "1", "dialogue": "a", "summary": "b"}\n{"id": \n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        DialogueDataLoader(tmp_path).load_splits()


def test_csv_with_a_broken_quote_is_a_clear_error(tmp_path):
    (tmp_path / "train.csv").write_text('id,dialogue,summary\n1,"A: hi,ok\n2,B: x,y\n')
    with pytest.raises(DataError, match="train.csv: cannot parse CSV"):
        DialogueDataLoader(tmp_path).load_splits()


def test_bundled_data_has_three_splits_and_both_turn_styles(bundled_splits):
    assert [len(bundled_splits[s]) for s in ("train", "validation", "test")] == [2400, 300, 300]
    dialogues = bundled_splits["train"]["dialogue"]
    assert dialogues.str.startswith("#Person1#").any() and (~dialogues.str.startswith("#Person")).any()


def test_bundled_data_is_what_the_generator_writes(tmp_path):
    from tune_dialsum.data.synthetic import write_dataset

    write_dataset(tmp_path)
    for split in ("train", "validation", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (BUNDLED_DATA / f"{split}.jsonl").read_bytes()


# -- the real corpora -------------------------------------------------------------------


def test_samsum_loads_with_its_quirks_handled(caplog):
    with caplog.at_level(logging.WARNING):
        train, validation, test = DialogueDataLoader(corpus_dir("samsum")).load_train_test_data(with_validation=True)
    assert (len(train), len(validation), test) == (14731, 818, None)  # 13828807 (empty dialogue) dropped
    assert "dropped 1 of 14732" in caplog.text
    assert "13728059-1" in set(train["id"]) and "13828807" not in set(train["id"])
    assert train["id"].map(type).eq(str).all()
    text = "".join(train["dialogue"]) + "".join(train["summary"])
    for quirk in ("\r", "\ufeff", "\u200e", "\u200d", "\t"):
        assert quirk not in text
    assert not train["dialogue"].str.match(r"\s").any() and not train["summary"].str.contains(r"\s$").any()


def test_dialogsum_loads_all_splits_and_normalises_speaker_tags():
    train, validation, test = DialogueDataLoader(corpus_dir("dialogsum")).load_train_test_data(with_validation=True)
    assert (len(train), len(validation), len(test)) == (12460, 500, 500)
    assert "topic" in train.columns
    miscased = train.set_index("id").loc["train_4374", "dialogue"]
    assert "#PErson2#" in miscased and "#PErson2#" not in format_dialogue(miscased, "standard")
    assert format_dialogue(train.set_index("id").loc["train_3591", "dialogue"]).startswith("#Person1#:")
