"""The decoding stage: generate() settings searched on trained checkpoints, without retraining them."""

from __future__ import annotations

import json

import pytest
import yaml
from transformers import GenerationConfig

from tests.conftest import REPO, run_cli
from tune_dialsum import cli, executor
from tune_dialsum.analysis import Experiment
from tune_dialsum.choices import BASELINE, read_decoding
from tune_dialsum.decoding import DecodingResult, DecodingTrial, choose, format_result, mark_fronts
from tune_dialsum.export import set_generation_config
from tune_dialsum.generation import generate_settings
from tune_dialsum.space import load_space


def _trial(number, rouge, words, seconds, feasible=True) -> DecodingTrial:
    scores = {"rougeL": rouge, "mean_words": words, "seconds_per_summary": seconds}
    return DecodingTrial(number, "t@1", {"num_beams": number + 2}, scores, feasible=feasible)


def _measured(records: list[dict], below: int) -> list[tuple]:
    return [(r["number"], r["settings"], r["scores"]) for r in records if r["number"] < below]


def test_sampled_settings_override_the_training_decoding_and_stay_consistent():
    assert generate_settings({"num_beams": 1, "max_length": 48}, {"num_beams": 4}) == {"num_beams": 4, "max_length": 48}
    # max_new_tokens replaces max_length (generate() would warn and ignore one); min never above max
    settings = generate_settings({"max_length": 48}, {"max_new_tokens": 16, "min_new_tokens": 30})
    assert settings == {"max_new_tokens": 16, "min_new_tokens": 16}
    # greedy: a length penalty would change nothing (and transformers 5 refuses to save it)
    assert generate_settings({"num_beams": 1}, {"length_penalty": 1.5}) == {"num_beams": 1}


def test_a_greedy_decoding_is_saved_over_a_config_made_for_beam_search(tmp_path):
    GenerationConfig(num_beams=4, early_stopping=True, length_penalty=2.0, max_length=142).save_pretrained(tmp_path)
    set_generation_config(tmp_path, {"num_beams": 1, "max_new_tokens": 40})
    saved = GenerationConfig.from_pretrained(tmp_path)
    assert (saved.num_beams, saved.max_new_tokens, saved.length_penalty, saved.early_stopping) == (1, 40, None, None)


def test_the_choice_is_the_best_that_meets_the_constraints_and_the_fronts_are_marked():
    baseline = _trial(BASELINE, 0.30, 20, 0.01)
    short = _trial(0, 0.32, 12, 0.02)
    best_but_long = _trial(1, 0.40, 50, 0.10, feasible=False)
    dominated = _trial(2, 0.31, 30, 0.05)
    records = [baseline, short, best_but_long, dominated]
    mark_fronts(records, "rougeL", "mean_words")
    assert choose(records, "rougeL", "mean_words") is short
    assert [r.front_length for r in records] == [False, True, True, False]  # the baseline: longer than `short`
    assert [r.front_time for r in records] == [True, True, True, False]  # the baseline: the fastest
    assert choose([baseline, best_but_long], "rougeL", "mean_words") is baseline
    assert choose([best_but_long], "rougeL", "mean_words") is None  # nothing met them: the caller keeps its own
    failed = DecodingTrial(0, "t@1", {"num_beams": 8}, error="OutOfMemoryError: CUDA out of memory")
    result = DecodingResult("s", "rougeL", [failed], choose([failed], "rougeL", "mean_words"), "", 1.0)
    assert result.chosen is None and "every decoding failed (OutOfMemoryError" in format_result(result)


def test_every_bundled_space_tunes_decoding_after_training_and_ranks_trials_greedily():
    for path in sorted((REPO / "search_spaces").glob("*.yaml")):
        space = load_space(path)
        assert space.decoding is not None and space.decoding.search, path.name
        assert "generation_num_beams" not in space.searched_settings, path.name  # paid with training
        assert space.fixed["generation_num_beams"] == 1, path.name


@pytest.mark.slow
def test_the_demo_tunes_how_its_best_checkpoint_writes(tiny_search):
    completed, experiment_dir = tiny_search
    space = load_space(REPO / "search_spaces" / "tiny.yaml")
    document = read_decoding(experiment_dir)
    trials = [r for r in document["records"] if r["number"] != BASELINE]
    assert len(trials) == space.decoding.num_samples and not any(r["error"] for r in trials)
    baselines = [r for r in document["records"] if r["number"] == BASELINE]
    assert len(baselines) == space.decoding.top_k_checkpoints
    assert baselines[0]["settings"]["num_beams"] == 1  # the decoding the trials were ranked with
    for record in document["records"]:
        assert record["scores"]["examples"] == space.decoding.max_eval_samples
        assert record["scores"]["mean_words"] > 0 and record["scores"]["seconds_per_summary"] > 0

    frame = Experiment.load(experiment_dir).decoding
    assert len(frame) == len(document["records"]) and frame["chosen"].sum() == 1
    chosen = frame[frame["chosen"]].iloc[0]
    assert chosen["rougeL"] == frame["rougeL"].max()  # no constraints in the demo: the best is chosen
    assert chosen["front_length"]  # the best score, and the shortest summaries among equal scores

    best_model = experiment_dir / "best_model"
    tuning = json.loads((best_model / "tuning.json").read_text())
    decoding = tuning["decoding"]
    assert decoding["study"] == document["study"] and decoding["training_study"] == "tiny-demo"
    assert decoding["trials"] == space.decoding.num_samples
    record = next(
        r for r in document["records"] if (r["number"], r["checkpoint"]) == tuple(document["chosen"].values())
    )
    assert decoding["settings"] == record["settings"]
    # the export decodes as chosen: generate() (and summarize) read its generation config
    generation = GenerationConfig.from_pretrained(best_model)
    for name, value in record["settings"].items():
        assert getattr(generation, name) == pytest.approx(value), name
    assert "## Decoding, tuned on validation without retraining" in (best_model / "README.md").read_text()
    assert "Decoding: 6 trials (0 failed) on 1 checkpoint(s), 120 validation examples each" in completed.stdout
    if document["chosen"]["number"] != BASELINE:  # the gain on test, measured both ways
        assert tuning["test_training_decoding"]["examples"] == tuning["test"]["examples"]
        assert "Test with the training decoding instead" in completed.stdout


@pytest.mark.slow
def test_tune_decoding_on_an_export_continues_its_study_and_chooses_under_the_constraints_of_the_day(
    tiny_search, tmp_path
):
    best_model = tiny_search[1] / "best_model"
    space = tmp_path / "decoding.yaml"
    decoding = {
        "search": {"num_beams": {"choice": [2, 3]}, "length_penalty": {"uniform": [0.5, 2.0]}},
        "num_samples": 2,
        "max_eval_samples": 16,
        "constraints": {"max_mean_length": 0.5, "length_unit": "words"},  # no summary is that short
    }
    command = ["tune-decoding", str(best_model), "--data", str(REPO / "data"), "--space", str(space)]
    out = tmp_path / "tuned"
    space.write_text(yaml.safe_dump({"decoding": decoding}))
    first = run_cli(*command, "--out", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "none met the constraints (mean length at most 0.5 words)" in first.stdout
    before = read_decoding(out)["records"]
    # nothing chosen: the model keeps the decoding it was exported with
    exported = GenerationConfig.from_pretrained(best_model).to_diff_dict()
    assert GenerationConfig.from_pretrained(out).to_diff_dict() == exported

    decoding["num_samples"] = 3  # one trial more, and the constraint gone: the same study goes on
    del decoding["constraints"]
    space.write_text(yaml.safe_dump({"decoding": decoding}))
    with executor.installed(executor.Inline()):  # the same command, its decodings inline: no second Ray
        assert cli.main([*command, "--out", str(out)]) == 0
    document = read_decoding(out)
    after = document["records"]
    assert sorted(r["number"] for r in after) == [BASELINE, 0, 1, 2]
    assert _measured(after, below=2) == _measured(before, below=2)  # measured once, kept
    chosen = next(r for r in after if r["number"] == document["chosen"]["number"])
    assert chosen["scores"]["rougeL"] == max(r["scores"]["rougeL"] for r in after)
    generation = GenerationConfig.from_pretrained(out)
    assert all(getattr(generation, k) == pytest.approx(v) for k, v in chosen["settings"].items())
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["decoding"]["trials"] == 3 and tuning["decoding"]["settings"] == chosen["settings"]
    # the export's test score was measured with its earlier decoding: kept, and labelled so
    assert "test" not in tuning and tuning["scores_before_decoding_tuning"]["test"]["examples"] == 300
