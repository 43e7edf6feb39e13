"""Export: choosing the best checkpoint, refusing to overwrite, atomic writes, the model card."""

import json
import shutil

import pytest

from tests.conftest import run_cli, trial_results
from tune_dialsum import export
from tune_dialsum.checkpoints import best_checkpoint, find_checkpoints
from tune_dialsum.contract import BEST_MODEL_DIR
from tune_dialsum.errors import ExportError, UsageError
from tune_dialsum.export import export_checkpoint


def _fake_checkpoint(root, trial, index, step, rouge_l, model_dir):
    """A checkpoint laid out as the trainable reports it: model files, trainer state, trial config."""
    path = root / f"trial_{trial}" / f"checkpoint_{index:06d}"
    shutil.copytree(model_dir, path)
    (path / "optimizer.pt").write_bytes(b"training state")
    history = [{"step": step, "eval_loss": 1.0, "eval_rougeL": rouge_l, "eval_rouge1": rouge_l}]
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    snapshot = {
        "trial_id": trial,
        "experiment": "fake",
        "config": {"model": "tiny:bart", "generation_num_beams": 3, "max_target_length": 40},
        "recipe": {"dialogue_format": "turns", "prefix": ""},
        "settings": {},
    }
    (path / "trial_config.json").write_text(json.dumps(snapshot))
    return path


@pytest.fixture
def fake_experiment(tmp_path, tiny_models):
    root = tmp_path / "exp"
    # trial a peaks before its last report; trial b is steadier but lower
    _fake_checkpoint(root, "a", 1, 200, 0.61, tiny_models["bart"])
    _fake_checkpoint(root, "a", 2, 300, 0.48, tiny_models["bart"])
    _fake_checkpoint(root, "b", 1, 300, 0.55, tiny_models["bart"])
    return root


def test_best_checkpoint_can_be_one_before_a_trials_last(fake_experiment):
    best = best_checkpoint(find_checkpoints(fake_experiment), "rougeL", "max")
    assert (best.trial_id, best.step) == ("a", 200)
    assert best_checkpoint(find_checkpoints(fake_experiment), "rougeL", "min").trial_id == "a"
    assert best_checkpoint(find_checkpoints(fake_experiment), "rougeL", "max", trial_id="b").step == 300


def test_export_writes_a_self_contained_model_directory(fake_experiment, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, GenerationConfig

    record = best_checkpoint(find_checkpoints(fake_experiment), "rougeL", "max")
    out = export_checkpoint(record, tmp_path / "model", "rougeL", "max")
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "tuning.json",
        "README.md",
    } <= names
    assert not names & {"optimizer.pt", "trainer_state.json", "trial_config.json"}
    assert GenerationConfig.from_pretrained(out).num_beams == 3  # the beams the trial was scored with
    AutoModelForSeq2SeqLM.from_pretrained(out)
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["trial_id"] == "a" and tuning["step"] == 200 and tuning["recipe"]["dialogue_format"] == "turns"
    assert {"transformers", "torch"} <= set(tuning["versions"])


def test_model_card_figures_equal_tuning_json(fake_experiment, tmp_path):
    record = best_checkpoint(find_checkpoints(fake_experiment), "rougeL", "max")
    out = export_checkpoint(record, tmp_path / "model", "rougeL", "max")
    tuning = json.loads((out / "tuning.json").read_text())
    card = (out / "README.md").read_text()
    for key, value in tuning["scores"].items():
        if key.startswith("rouge"):
            assert f"| {key} | {value:.4f} |" in card
    assert "Test scores" not in card  # nothing claims a test figure that was never measured


def test_test_scores_lead_the_card_and_validation_is_labelled_as_used_for_selection(fake_experiment, tmp_path):
    record = best_checkpoint(find_checkpoints(fake_experiment), "rougeL", "max")
    out = export_checkpoint(record, tmp_path / "model", "rougeL", "max")
    full = {"examples": 300, "rouge1": 0.5, "rouge2": 0.25, "rougeL": 0.4, "rougeLsum": 0.41}
    test = {"examples": 200, "rouge1": 0.45, "rouge2": 0.2, "rougeL": 0.35, "rougeLsum": 0.36}
    export.record_scores(out, full_validation=full, test=test)
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["test"] == test and tuning["full_validation"] == full
    card = (out / "README.md").read_text()
    test_at, full_at, ranking_at = (
        card.index("## Test scores (200 examples, never used to choose)"),
        card.index("## Validation scores, used for selection (all 300 examples)"),
        card.index("used for ranking"),
    )
    assert test_at < full_at < ranking_at
    assert "| rougeL | 0.3500 |" in card[test_at:full_at] and "| rougeL | 0.4000 |" in card[full_at:ranking_at]


def test_replacing_an_export_swaps_by_rename_and_honours_the_umask(fake_experiment, tmp_path):
    import os

    record = best_checkpoint(find_checkpoints(fake_experiment), "rougeL", "max")
    previous = os.umask(0o022)
    try:
        out = export_checkpoint(record, tmp_path / "model", "rougeL", "max")
        assert out.stat().st_mode & 0o777 == 0o755  # mkdtemp alone would give 0o700
        os.umask(0o077)
        export_checkpoint(record, out, "rougeL", "max", force=True)
        assert out.stat().st_mode & 0o777 == 0o700
    finally:
        os.umask(previous)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging, no old copy


def test_a_crash_between_the_renames_leaves_the_old_model_aside(fake_experiment, tmp_path, monkeypatch):
    from pathlib import Path

    record = best_checkpoint(find_checkpoints(fake_experiment), "rougeL", "max")
    out = export_checkpoint(record, tmp_path / "model", "rougeL", "max")
    original = Path.rename

    def rename(self, target):
        if self.name.startswith(".model.partial-"):
            raise OSError("simulated crash before the new model takes its name")
        return original(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError):
        export_checkpoint(record, out, "rougeL", "max", force=True)
    kept = list(tmp_path.glob(".model.old-*/model/model.safetensors"))
    assert len(kept) == 1  # never no copy at all


def test_export_by_eval_loss_prints_its_value(fake_experiment, tmp_path):
    completed = run_cli("export", str(fake_experiment), "--out", str(tmp_path / "m"), "--metric", "eval_loss")
    assert "eval_loss=nan" not in completed.stdout


def test_export_refuses_to_overwrite_without_force(fake_experiment, tmp_path):
    record = best_checkpoint(find_checkpoints(fake_experiment), "rougeL", "max")
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists; pass --force"):
        export_checkpoint(record, target, "rougeL", "max")
    assert (target / "keep.txt").read_text() == "mine"


def test_force_replaces_only_an_earlier_export(fake_experiment, tmp_path):
    """Issue 24.4: ``--force`` with an ``--out`` that names an experiment (or any directory of the user's) refuses."""
    record = best_checkpoint(find_checkpoints(fake_experiment), "rougeL", "max")
    with pytest.raises(UsageError, match=r"is not an earlier export \(it has no tuning.json\).*another --out"):
        export_checkpoint(record, fake_experiment, "rougeL", "max", force=True)
    assert (fake_experiment / "trial_a").is_dir()  # the experiment is untouched
    empty = tmp_path / "empty"
    empty.mkdir()
    export_checkpoint(record, empty, "rougeL", "max", force=True)  # an empty directory is nobody's
    export_checkpoint(record, empty, "rougeL", "max", force=True)  # nor is an earlier export
    assert (empty / "tuning.json").is_file()


def test_updating_an_exports_scores_never_leaves_a_half_written_file(fake_experiment, tmp_path, monkeypatch):
    """Issue 24.6: tuning.json and the card are replaced by a rename, so a failed write keeps the old text."""
    from pathlib import Path

    out = export_checkpoint(
        best_checkpoint(find_checkpoints(fake_experiment), "rougeL", "max"), tmp_path / "m", "rougeL", "max"
    )
    before = (out / "tuning.json").read_text()
    original = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        original(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="disk full"):
        export.record_scores(out, test={"rougeL": 0.5})
    monkeypatch.undo()
    assert (out / "tuning.json").read_text() == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no staging left either


def test_a_failed_export_leaves_no_half_directory(fake_experiment, tmp_path, monkeypatch):
    record = best_checkpoint(find_checkpoints(fake_experiment), "rougeL", "max")

    def broken_card(tuning):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_model_card", broken_card)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(record, tmp_path / "model", "rougeL", "max")
    assert list(tmp_path.iterdir()) == [tmp_path / "exp"]


def test_no_scored_checkpoint_means_nothing_to_export(tmp_path):
    (tmp_path / "trial_x").mkdir()
    with pytest.raises(ExportError, match="nothing to export"):
        best_checkpoint(find_checkpoints(tmp_path), "rougeL", "max")


@pytest.mark.slow
def test_export_command_on_a_real_experiment(tiny_search, tmp_path):
    _, experiment_dir = tiny_search
    out = tmp_path / "exported"
    completed = run_cli("export", str(experiment_dir), "--out", str(out))
    assert completed.returncode == 0, completed.stderr
    # what the search chose (selection.json: not always the best subset score, see selection.py), as its own export has it
    exported = json.loads((out / "tuning.json").read_text())
    searched = json.loads((experiment_dir / BEST_MODEL_DIR / "tuning.json").read_text())
    assert (exported["trial_id"], exported["step"]) == (searched["trial_id"], searched["step"])
    all_scores = [row["rougeL"] for rows in trial_results(experiment_dir).values() for row in rows]
    assert exported["scores"]["rougeL"] == pytest.approx(searched["scores"]["rougeL"])
    assert any(exported["scores"]["rougeL"] == pytest.approx(score) for score in all_scores)  # a score a trial reported
    again = run_cli("export", str(experiment_dir), "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    onto_the_experiment = run_cli("export", str(experiment_dir), "--out", str(experiment_dir), "--force")
    assert onto_the_experiment.returncode == 2 and "not an earlier export" in onto_the_experiment.stderr
    assert "Traceback" not in onto_the_experiment.stderr and (experiment_dir / "space.yaml").is_file()


def test_export_of_a_missing_experiment_is_a_clear_error(tmp_path):
    completed = run_cli("export", str(tmp_path / "nope"), "--out", str(tmp_path / "m"), timeout=120)
    assert completed.returncode == 2 and "not an experiment directory" in completed.stderr


def test_trimming_a_stopped_trial_keeps_the_checkpoints_selection_chose(fake_experiment):
    from tune_dialsum.finish import trim_ended_trials
    from tune_dialsum.storage import ExperimentStore

    records = find_checkpoints(fake_experiment)
    later = next(r for r in records if (r.trial_id, r.step) == ("a", 300))  # chosen on all of validation
    trim_ended_trials(ExperimentStore(str(fake_experiment)), records, {"a"}, {"b"}, "rougeL", "max", keep={later.path})
    left = {(r.trial_id, r.step) for r in find_checkpoints(fake_experiment)}
    assert left == {("a", 200), ("a", 300), ("b", 300)}  # the subset's best and the chosen one stay
    assert not list(fake_experiment.rglob("optimizer.pt"))  # ended trials: weights only
    trim_ended_trials(
        ExperimentStore(str(fake_experiment)), find_checkpoints(fake_experiment), {"a"}, set(), "rougeL", "max"
    )
    assert {(r.trial_id, r.step) for r in find_checkpoints(fake_experiment)} == {("a", 200), ("b", 300)}


def _record_trials(experiment_dir, *trial_ids):
    """Ray's saved experiment state, as far as the summary reads it: which trials the experiment knows."""
    trial_data = [[json.dumps({"trial_id": t}), "{}"] for t in trial_ids]
    (experiment_dir / "experiment_state-0.json").write_text(json.dumps({"trial_data": trial_data}))


def test_an_interrupted_continuation_leaves_a_finished_runs_model_and_choices_as_they_were(fake_experiment):
    """Issue 24.1: a ``--resume --num-samples N`` stopped by Ctrl-C has ranking scores only; the tested model stays."""
    from tests.conftest import REPO
    from tune_dialsum import finish, outcome
    from tune_dialsum.choices import read_selection
    from tune_dialsum.experiment_context import experiment_context
    from tune_dialsum.space import load_space
    from tune_dialsum.storage import ExperimentStore

    space = load_space(REPO / "search_spaces" / "tiny.yaml")  # 8 trials asked for, none recorded here: unfinished
    records = find_checkpoints(fake_experiment)
    chosen = next(r for r in records if (r.trial_id, r.step) == ("b", 300))  # not the subset's best (a@200)
    model = export_checkpoint(chosen, fake_experiment / "best_model", "rougeL", "max")
    export.record_scores(model, full_validation={"rougeL": 0.58, "examples": 3}, test={"rougeL": 0.57, "examples": 3})
    selection = {"metric": "rougeL", "chosen": {"trial_id": "b", "step": 300}, "candidates": []}
    (fake_experiment / "selection.json").write_text(json.dumps(selection))
    tuning_before = (model / "tuning.json").read_text()

    _record_trials(fake_experiment, "a", "b")
    store = ExperimentStore(str(fake_experiment))
    result = finish.summarize([], space, experiment_context(space, store), store)

    assert (model / "tuning.json").read_text() == tuning_before  # neither replaced nor re-exported
    assert (result.best.trial_id, result.best.step) == ("b", 300)
    assert read_selection(fake_experiment)["chosen"] == {"trial_id": "b", "step": 300}
    assert "Kept: the model an earlier finished run of this experiment exported" in outcome.format_summary(result)
    assert chosen.path in finish.recorded_choices(
        fake_experiment, find_checkpoints(fake_experiment)
    )  # and so a trim keeps it


def test_an_interrupted_first_run_exports_its_best_by_the_ranking_score(fake_experiment):
    from tests.conftest import REPO
    from tune_dialsum import finish
    from tune_dialsum.experiment_context import experiment_context
    from tune_dialsum.space import load_space
    from tune_dialsum.storage import ExperimentStore

    space = load_space(REPO / "search_spaces" / "tiny.yaml")
    _record_trials(fake_experiment, "a", "b")
    store = ExperimentStore(str(fake_experiment))
    result = finish.summarize([], space, experiment_context(space, store), store)
    assert (result.best.trial_id, result.best.step) == ("a", 200) and not result.kept_earlier_export
    assert json.loads((fake_experiment / "best_model" / "tuning.json").read_text())["trial_id"] == "a"
