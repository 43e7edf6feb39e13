"""The real search, end to end, with real Ray processes (slow: minutes in all)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import (
    REPO,
    TINY,
    demo_root,
    run_cli,
    trial_results,
)
from tune_dialsum.adapters import LORA_SETTINGS
from tune_dialsum.checkpoints import find_checkpoints, scored_in_trial
from tune_dialsum.space import SETTINGS

pytestmark = pytest.mark.slow


def _search(*args: str, storage: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_cli("search", "--space", str(TINY), "--storage-path", str(storage), *args, timeout=timeout)


RUNGS = {1600, 3200, 4800, 6400}  # tiny.yaml: eval_interval and max_budget, in training examples


def test_tiny_search_runs_to_the_end_and_prints_its_summary(tiny_search):
    completed, experiment_dir = tiny_search
    assert "Search finished: 8 trials (2 at a time)" in completed.stdout  # as many as the 2 CPUs fit
    assert "Best trial:" in completed.stdout and f"Best model: {experiment_dir / 'best_model'}" in completed.stdout
    assert "RUNNING" in completed.stdout and "rougeL" in completed.stdout  # the live table


def test_budgets_count_training_examples_so_batch_sizes_compare_after_equal_work(tiny_search):
    _, experiment_dir = tiny_search
    results = trial_results(experiment_dir)
    batches = set()
    for name, rows in results.items():
        batch = json.loads((experiment_dir / name / "params.json").read_text())["batch_size"]
        batches.add(batch)
        assert {row["samples"] for row in rows} <= RUNGS, name  # evaluated at the same work whatever the batch
        assert all(row["samples"] == row["step"] * batch for row in rows)
    assert batches == {8, 16}
    last = [rows[-1]["samples"] for rows in results.values()]
    assert any(s < 6400 for s in last) and any(s == 6400 for s in last)  # ASHA stopped some at a rung


def test_the_scheduler_ranks_on_the_best_score_so_far(tiny_search):
    _, experiment_dir = tiny_search
    for rows in trial_results(experiment_dir).values():
        running_best = 0.0
        for row in rows:
            running_best = max(running_best, row["rougeL"])
            assert row["best_rougeL"] == pytest.approx(running_best)  # the raw value stays under rougeL


def test_stopped_trials_reach_optuna_as_pruned_with_their_curves(tiny_search):
    _, experiment_dir = tiny_search
    study = optuna.load_study(study_name="tiny-demo", storage=f"sqlite:///{experiment_dir / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == 8
    assert states.count(optuna.trial.TrialState.PRUNED) >= 3
    for trial in study.trials:
        assert trial.intermediate_values, trial  # keyed by training examples seen
        assert set(trial.intermediate_values) <= RUNGS
        values = [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)]
        assert values == sorted(values)  # best so far: never falls
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert max(trial.intermediate_values) == 6400


def test_the_export_is_the_best_of_the_top_checkpoints_on_all_of_validation(tiny_search):
    completed, experiment_dir = tiny_search
    selection = json.loads((experiment_dir / "selection.json").read_text())
    candidates = selection["candidates"]
    assert len(candidates) == 3  # selection.top_k
    # once all 8 trials had started, the best so far were scored beside the last ones (early_rescoring.py)
    assert any(c["scored_during_trials"] for c in candidates)
    # and a trial that trained its whole budget scored its last checkpoint itself (trainable.py)
    records = find_checkpoints(experiment_dir)
    finished = [r for r in records if r.budget("samples") >= 6400]
    assert finished and all(scored_in_trial(r) is not None for r in finished)
    assert all(scored_in_trial(r) is None for r in records if r not in finished)
    for candidate in candidates:
        record = next(r for r in records if (r.trial_id, r.step) == (candidate["trial_id"], candidate["step"]))
        if record in finished:
            assert candidate["scored_during_trials"]
            assert candidate["full_validation"] == scored_in_trial(record)["rougeL"]
    subset_scores = sorted(
        (row["rougeL"] for rows in trial_results(experiment_dir).values() for row in rows), reverse=True
    )
    assert [c["subset"] for c in candidates] == pytest.approx(subset_scores[:3])  # the top 3 by the ranking score
    # the best on all of validation, unless a checkpoint of its own trial is within its paired 95% interval:
    # then the lower loss, the later step (selection.ranked; between trials the better score decides)
    best = max(candidates, key=lambda c: c["full_validation"])
    chosen = selection["chosen"]
    assert selection["within_noise"] == any(
        c["difference_from_leader"][1] <= 0
        for c in candidates
        if (c["trial_id"], c["step"]) != (best["trial_id"], best["step"])
    )
    if not selection["within_noise"]:
        assert (chosen["trial_id"], chosen["step"]) == (best["trial_id"], best["step"])
    else:
        assert "Chosen within noise" in completed.stdout
        # its trial's best on validation, or a checkpoint of that trial with a loss as low (test_signal.py)
        own_best = max(
            (c for c in candidates if c["trial_id"] == chosen["trial_id"]), key=lambda c: c["full_validation"]
        )
        loss = {id(c): math.inf if c["eval_loss"] is None else c["eval_loss"] for c in (chosen, own_best)}
        assert chosen == own_best or loss[id(chosen)] <= loss[id(own_best)]
        # and at least as good as any trial that had a single candidate, which stands for its trial as it is
        for trial_id in {c["trial_id"] for c in candidates}:
            own = [c for c in candidates if c["trial_id"] == trial_id]
            if len(own) == 1 and not own[0]["degenerate"]:
                assert chosen["full_validation"] >= own[0]["full_validation"]
    for candidate in candidates:  # every figure that decided carries its interval
        low, high = candidate["interval"]
        assert low <= candidate["full_validation"] <= high
    tuning = json.loads((experiment_dir / "best_model" / "tuning.json").read_text())
    assert (tuning["trial_id"], tuning["step"]) == (chosen["trial_id"], chosen["step"])
    assert tuning["full_validation"]["examples"] == 300
    assert tuning["full_validation"]["rougeL"] == pytest.approx(chosen["full_validation"])
    # the model's figure is on test, which chose nothing
    assert tuning["test"]["examples"] == 300 and 0 < tuning["test"]["rougeL"] < 1
    assert f"Test, 300 examples (not used to choose): rouge1={tuning['test']['rouge1']:.4f}" in completed.stdout
    assert "Validation, all 300 examples (used to choose among the top 3" in completed.stdout
    low, high = tuning["test"]["intervals"]["rougeL"]
    assert low <= tuning["test"]["rougeL"] <= high
    assert f"rougeL={tuning['test']['rougeL']:.4f} [{low:.4f}, {high:.4f}]" in completed.stdout
    assert "Rungs at samples 1600, 4800 ranked on" in completed.stdout  # which signal ranked the rungs
    card = (experiment_dir / "best_model" / "README.md").read_text()
    assert card.index("## Test scores") < card.index("used for selection")


def test_best_model_is_exported_loadable_and_summarises(tiny_search):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    _, experiment_dir = tiny_search
    best = experiment_dir / "best_model"
    tuning = json.loads((best / "tuning.json").read_text())
    assert not (best / "optimizer.pt").exists()
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(best), AutoTokenizer.from_pretrained(best)
    prefix = tuning["recipe"]["prefix"]
    ids = model.generate(
        **tokenizer([prefix + "Anna: Can I borrow your bike?\nTom: Sure, I will bring it Friday."], return_tensors="pt")
    )
    assert tokenizer.decode(ids[0], skip_special_tokens=True).strip()


def test_the_demo_tokenizers_learnt_the_train_split_of_the_searched_data(tiny_search):
    from tests.conftest import BUNDLED_DATA
    from tune_dialsum import DialogueDataLoader

    _, experiment_dir = tiny_search
    fingerprint = DialogueDataLoader(BUNDLED_DATA).fingerprint(("train",))
    cache = demo_root(experiment_dir) / "cache" / "tiny_models"  # the demo's own TUNE_DIALSUM_CACHE
    assert {p.name for p in cache.iterdir()} == {f"bart-{fingerprint}", f"t5-{fingerprint}"}


def test_every_checkpoint_carries_the_resolved_config(tiny_search):
    _, experiment_dir = tiny_search
    checkpoints = list(experiment_dir.glob("trial_*/checkpoint_*"))
    assert checkpoints
    for checkpoint in checkpoints:
        snapshot = json.loads((checkpoint / "trial_config.json").read_text())
        assert {"model", "learning_rate", "dialogue_format", "batch_size", "max_target_length"} <= set(
            snapshot["config"]
        )
        assert not any("@" in key for key in snapshot["config"])
        # every value the trial trained with, defaults (the family's included) as much as sampled ones; the
        # demo's trials train every weight, so LoRA's settings are not among them
        assert snapshot["config"]["adapter"] == "none"
        assert set(SETTINGS) - set(LORA_SETTINGS) == set(snapshot["config"]) & set(SETTINGS)
        assert all(snapshot["config"][key] is not None for key in ("learning_rate", "batch_size", "warmup_steps"))


def test_trials_share_tokenized_data_through_the_experiment(tiny_search):
    _, experiment_dir = tiny_search
    recipes = set()
    for trial_dir in experiment_dir.glob("trial_*"):
        config = json.loads((trial_dir / "params.json").read_text())
        recipes.add(tuple(config[k] for k in ("model", "dialogue_format", "max_input_length", "max_target_length")))
    cached = list((experiment_dir / "tokenized").glob("*/dataset_dict.json"))
    # one tokenization per distinct way of building inputs, however many trials used it
    assert len(cached) == len(recipes) < 8


def test_checkpoints_per_trial_stay_bounded(tiny_search):
    _, experiment_dir = tiny_search
    for trial_dir in experiment_dir.glob("trial_*"):
        # checkpoints.keep (2) best by the objective, plus the latest, which Ray keeps for resuming
        assert len(list(trial_dir.glob("checkpoint_*"))) <= 3


def test_an_existing_experiment_is_not_overwritten(tiny_search):
    _, experiment_dir = tiny_search
    completed = _search(storage=experiment_dir.parent, timeout=120)
    assert completed.returncode == 2
    assert "already exists" in completed.stderr and "--resume" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_unreachable_hub_model_fails_fast_with_one_line(tmp_path):
    start = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "tune_dialsum",
        "search",
        "--space",
        str(REPO / "search_spaces" / "bart.yaml"),
        "--storage-path",
        str(tmp_path),
    ]
    completed = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1].startswith("error: model 'facebook/bart-base'")
    assert "Traceback" not in completed.stderr
    assert time.perf_counter() - start < 60
    assert not any(tmp_path.iterdir())  # nothing started


def test_resume_with_nothing_to_resume_is_a_clear_error(tmp_path):
    completed = _search("--resume", "--name", "never-ran", storage=tmp_path, timeout=120)
    assert completed.returncode == 2 and "nothing to resume" in completed.stderr
