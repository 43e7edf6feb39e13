"""Search-space files: a contract over every shipped file, and one test per bad input."""

from dataclasses import fields
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import REPO
from tune_dialsum.errors import SpaceError
from tune_dialsum.models import family_of
from tune_dialsum.space import SETTINGS, load_space, parse_space
from tune_dialsum.space_schema import DataSection, ResourcesSection, SchedulerSection

SPACE_FILES = sorted((REPO / "search_spaces").glob("*.yaml"))
MINIMAL = "search:\n  learning_rate: {loguniform: [1.0e-5, 1.0e-4]}\nfixed:\n  model: tiny:bart\nscheduler:\n  max_budget: 100\n"


def test_the_shipped_spaces_are_all_there():
    assert {p.stem for p in SPACE_FILES} >= {"bart", "t5", "pegasus", "multi_model", "tiny"}


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.stem)
def test_every_space_file_loads_validates_and_samples(path):
    space = load_space(path)
    study = optuna.create_study(direction=space.mode + "imize", sampler=optuna.samplers.TPESampler(seed=1))
    for _ in range(5):
        config = space.define_by_run(study.ask())
        assert set(config) <= set(SETTINGS)
        assert "model" in config and config.get("learning_rate", 1) > 0
        family_ranges = space.per_family.get(family_of(config["model"]).name, {})
        adapter_ranges = space.per_adapter.get(config.get("adapter", "none"), {})
        for name, distribution in {**space.search, **family_ranges, **adapter_ranges}.items():
            if name.startswith("lora_") and config.get("adapter") != "lora":
                assert config[name] is None  # LoRA's settings only in a LoRA trial
                continue
            if distribution.kind == "choice":
                assert config[name] in distribution.args
            else:
                low, high = distribution.bounds
                assert low <= config[name] <= high
    assert space.scheduler.grace_period <= space.scheduler.max_budget


def test_multi_model_ranges_follow_the_sampled_family():
    space = load_space(REPO / "search_spaces" / "multi_model.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        config = space.define_by_run(trial)
        family = "pegasus" if "pegasus" in config["model"] else "t5" if "t5" in config["model"] else "bart"
        low, high = space.per_family[family]["learning_rate"].bounds
        assert low <= config["learning_rate"] <= high
        assert trial.params[f"learning_rate@{family}"] == config["learning_rate"]  # its own name in Optuna
        seen.add(family)
    assert seen == {"bart", "t5", "pegasus"}


def test_yaml_numbers_without_a_dot_are_coerced(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(MINIMAL.replace("1.0e-5", "1e-5").replace("1.0e-4", "1e-4"))  # YAML 1.1 reads these as str
    assert load_space(path).search["learning_rate"].args == (1e-5, 1e-4)


def test_overrides_reach_nested_keys(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(MINIMAL)
    space = load_space(path, ["trials.num_samples=3", "scheduler.max_budget=50", "name=other"])
    assert (space.trials.num_samples, space.scheduler.max_budget, space.name) == (3, 50, "other")


BAD_SPACES = {
    "syntax error": ("search: {learning_rate: [1, 2\n", r"YAML syntax error at line \d+"),
    "unknown top-level key": (MINIMAL + "serach: {}\n", r"serach: unknown key; valid keys: name, .*search"),
    "unknown setting": (MINIMAL + "  colour: red\n", r"scheduler.colour: unknown key; valid keys:"),
    "unknown searched setting": (
        MINIMAL.replace("learning_rate:", "learnig_rate:"),
        r"search.learnig_rate: unknown key; valid keys: .*learning_rate",
    ),
    "wrong type": (
        MINIMAL.replace("max_budget: 100", "max_budget: lots"),
        r"scheduler.max_budget: expected an integer but got 'lots'",
    ),
    "reversed range": (
        MINIMAL.replace("[1.0e-5, 1.0e-4]", "[1.0e-4, 1.0e-5]"),
        r"low must be below high but got low=0.0001",
    ),
    "empty range": (MINIMAL.replace("[1.0e-5, 1.0e-4]", "[1.0e-4, 1.0e-4]"), "low must be below high"),
    "log range at zero": (
        MINIMAL.replace("[1.0e-5, 1.0e-4]", "[0, 1.0e-4]"),
        r"a log range must be above 0 but got low=0",
    ),
    "empty choice": (MINIMAL + "  dialogue_format: {choice: []}\n".replace("  d", "d"), None),
    "unknown dialogue format": (
        MINIMAL.replace("fixed:\n", "fixed:\n  dialogue_format: chatty\n"),
        r"fixed.dialogue_format: unknown dialogue format 'chatty'; use one of standard, turns, compact",
    ),
    "unknown model family": (MINIMAL.replace("tiny:bart", "tiny:gpt"), r"unknown model family 'gpt'"),
    "unknown distribution": (
        MINIMAL.replace("loguniform", "lognormal"),
        r"unknown distribution 'lognormal'; use one of",
    ),
    "num_samples of zero": (
        MINIMAL + "trials: {num_samples: 0}\n",
        r"trials.num_samples: must be at least 1 but got 0",
    ),
    "grace above budget": (
        MINIMAL.replace("max_budget: 100", "max_budget: 100\n  grace_period: 200"),
        "exceeds max_budget",
    ),
    "no model": (MINIMAL.replace("  model: tiny:bart\n", ""), "no model: set fixed.model"),
    "empty file": ("", "the file is empty"),
    "not a mapping": ("- a\n- b\n", "the top level must be a mapping"),
    "unknown objective": (MINIMAL + "objective: {metric: bleu}\n", r"objective.metric: unknown metric 'bleu'"),
    "uniform on an integer setting": (MINIMAL + "  batch_size: {uniform: [2, 8]}\n".replace("  b", "b"), None),
    "per-family for an unknown family": (
        MINIMAL + "per_family: {gpt: {}}\n",
        r"per_family.gpt: unknown key; valid keys: bart, pegasus, t5",
    ),
    "negative cpus": (
        MINIMAL + "resources: {cpus_per_trial: -1}\n",
        r"resources.cpus_per_trial: must be greater than 0",
    ),
    "bad name": (MINIMAL + "name: ../escape\n", r"name: '../escape' must be letters"),
    "num_train_epochs searched while the scheduler sets the budget": (
        MINIMAL.replace("search:\n", "search:\n  num_train_epochs: {choice: [3, 5]}\n"),
        r"search.num_train_epochs: has no effect: the scheduler sets every trial's budget",
    ),
    "num_train_epochs searched per family": (
        MINIMAL + "per_family: {bart: {num_train_epochs: {choice: [3, 5]}}}\n",
        r"per_family.bart.num_train_epochs: has no effect",
    ),
    "eval_interval above budget": (
        MINIMAL.replace("max_budget: 100", "max_budget: 100\n  eval_interval: 150"),
        r"scheduler.eval_interval: 150 exceeds max_budget 100",
    ),
    "warmup_ratio of one": (
        MINIMAL.replace("fixed:\n", "fixed:\n  warmup_ratio: 1.0\n"),
        r"fixed.warmup_ratio: warmup_ratio is a fraction: it must be below 1",
    ),
    "warmup_ratio range reaching one": (
        MINIMAL.replace("search:\n", "search:\n  warmup_ratio: {uniform: [0.0, 1.5]}\n"),
        r"search.warmup_ratio.uniform: warmup_ratio is a fraction",
    ),
    "eval_loss maximised": (
        MINIMAL + "objective: {metric: eval_loss, mode: max}\n",
        r"objective.mode: eval_loss is better lower: use mode: min",
    ),
    "rougeL minimised": (MINIMAL + "objective: {metric: rougeL, mode: min}\n", r"use mode: max"),
    "unknown budget unit": (
        MINIMAL.replace("max_budget: 100", "max_budget: 100\n  budget_unit: tokens"),
        r"scheduler.budget_unit: must be one of samples, steps, epochs but got 'tokens'",
    ),
    "top_k of zero": (MINIMAL + "selection: {top_k: 0}\n", r"selection.top_k: must be at least 1"),
    "gradient_checkpointing not a bool": (
        MINIMAL.replace("model: tiny:bart", "model: tiny:bart\n  gradient_checkpointing: 'on'"),
        r"fixed.gradient_checkpointing: expected true or false but got 'on'",
    ),
    "unknown mixed precision": (
        MINIMAL.replace("model: tiny:bart", "model: tiny:bart\n  mixed_precision: fp8"),
        r"fixed.mixed_precision: unknown precision 'fp8'; use one of auto, bf16, fp16, no",
    ),
    "unknown batch order": (
        MINIMAL.replace("model: tiny:bart", "model: tiny:bart\n  batch_order: sorted"),
        r"fixed.batch_order: unknown batch order 'sorted'; use one of random, length_grouped",
    ),
    "trust_remote_code not a bool": (
        MINIMAL + "trust_remote_code: 'yes'\n",
        r"trust_remote_code: expected true or false",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_is_one_line_naming_the_file(tmp_path, case):
    text, pattern = BAD_SPACES[case]
    if pattern is None:  # these append a line under search:
        text = MINIMAL.replace("search:\n", "search:\n  " + text[len(MINIMAL) :])
        pattern = r"choice: the list of choices is empty" if "choice" in text else r"batch_size takes whole numbers"
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=pattern) as err:
        load_space(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_missing_space_file_names_it(tmp_path):
    with pytest.raises(SpaceError, match="no such space file"):
        load_space(tmp_path / "nope.yaml")


def test_bad_override_is_explained(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(MINIMAL)
    with pytest.raises(SpaceError, match="expected KEY=VALUE"):
        load_space(path, ["trials.num_samples"])


def test_space_module_imports_neither_ray_nor_torch():
    import subprocess
    import sys

    code = "import sys, tune_dialsum.space; print(any(m in sys.modules for m in ('ray', 'torch')))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_parse_space_accepts_a_dict():
    import yaml

    space = parse_space(yaml.safe_load(MINIMAL), source="inline")
    assert space.name == "search" and space.metric == "rougeL" and space.mode == "max"
    assert Path(space.storage_path) == Path("ray_results")


def test_samples_budget_and_room_for_as_many_trials_as_fit(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(MINIMAL)
    space = load_space(path, ["scheduler.budget_unit=samples", "scheduler.max_budget=6400"])
    assert space.scheduler.budget_unit == "samples" and space.trials.max_concurrent is None
    assert space.selection.top_k == 3


def test_searching_the_batch_size_over_a_step_budget_is_warned_about(tmp_path, caplog):
    path = tmp_path / "s.yaml"
    path.write_text(MINIMAL.replace("search:\n", "search:\n  batch_size: {choice: [4, 8]}\n"))
    load_space(path)
    assert "budget_unit: samples compares them after the same number of training examples" in caplog.text
    caplog.clear()
    load_space(path, ["scheduler.budget_unit=samples"])
    assert "unequal work" not in caplog.text


def test_bundled_spaces_that_search_batch_or_accumulation_budget_in_samples():
    for path in sorted((REPO / "search_spaces").glob("*.yaml")):
        space = load_space(path)
        if {"batch_size", "gradient_accumulation_steps"} & set(space.searched_settings):
            assert space.scheduler.budget_unit in ("samples", "epochs"), path.name


def test_the_demo_searches_model_rate_format_and_a_length():
    space = load_space(REPO / "search_spaces" / "tiny.yaml")
    assert {"model", "learning_rate", "dialogue_format", "max_target_length"} <= set(space.searched_settings)


def test_memory_levers_default_off_and_can_be_fixed_or_searched(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(MINIMAL)
    assert {k: load_space(path).fixed[k] for k in ("gradient_checkpointing", "mixed_precision")} == {
        "gradient_checkpointing": False,
        "mixed_precision": "auto",
    }
    searched = "search:\n  gradient_checkpointing: {choice: [true, false]}\n  mixed_precision: {choice: [bf16, no]}\n"
    path.write_text(MINIMAL.replace("search:\n", searched))
    space = load_space(path)
    config = space.define_by_run(optuna.create_study().ask())
    assert config["gradient_checkpointing"] in (True, False) and config["mixed_precision"] in ("bf16", "no")


def test_readme_lists_every_space_key_as_space_keys_prints_it(capsys):
    from tune_dialsum.cli import main

    assert main(["space-keys"]) == 0
    printed = capsys.readouterr().out.strip()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listed = readme.split("<!-- space-keys: begin -->")[1].split("<!-- space-keys: end -->")[0].strip()
    assert listed == printed, "README's space reference is stale: paste `python -m tune_dialsum space-keys` into it"


def test_the_keys_space_keys_prints_are_the_keys_a_space_takes():
    from tune_dialsum.space_schema import space_keys

    listed = {key for key, _, _ in space_keys()}
    for section, keys in (("data", DataSection), ("scheduler", SchedulerSection), ("resources", ResourcesSection)):
        assert {f"{section}.{f.name}" for f in fields(keys)} <= listed
    for bad in ("data.dialogue_col", "scheduler.max_steps", "resources.cpus"):
        section, key = bad.split(".")
        with pytest.raises(SpaceError, match=rf"{section}\.{key}: unknown key; valid keys: "):
            parse_space({**yaml.safe_load(MINIMAL), section: {key: 1}})
    assert {f"SETTING {name}" for name in SETTINGS} <= listed
