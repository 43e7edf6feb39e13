"""summarize and evaluate: the trained format and prefix are applied, figures match compute_rouge."""

import io
import json
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import BUNDLED_DATA, run_cli
from tune_dialsum.cli import main
from tune_dialsum.contract import RECIPE_FILE
from tune_dialsum.inference import DialogueSummarizer, read_dialogues
from tune_dialsum.metrics import compute_rouge

DIALOGUES = [
    "Anna: Can I borrow your bike?\nTom: Sure, I will bring it Friday.",
    "#Person1#: I lost my keys.\n#Person2#: I found keys at the gym.",
]


def _cli(capsys, monkeypatch, *argv: str, input: str | None = None) -> SimpleNamespace:
    """The command in this process, as ``run_cli`` gives it back: what is tested is the command's logic; one
    test (stdin text) runs ``python -m tune_dialsum summarize`` as a real process."""
    if input is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(input))
    code = main(list(argv))
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


@pytest.fixture
def t5_model_dir(tiny_models, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_models["t5"], model_dir)
    recipe = {"dialogue_format": "compact", "prefix": "summarize: ", "max_input_length": 128}
    (model_dir / RECIPE_FILE).write_text(json.dumps(recipe))
    return model_dir


def test_summarizer_applies_the_trained_format_and_prefix(t5_model_dir):
    summarizer = DialogueSummarizer(t5_model_dir)
    assert summarizer.model_input(DIALOGUES[0]) == "summarize: Can I borrow your bike? Sure, I will bring it Friday."


def test_summarize_matches_generate_on_the_formatted_input(t5_model_dir):
    summarizer = DialogueSummarizer(t5_model_dir, batch_size=1)
    expected = []
    for dialogue in DIALOGUES:
        encoded = summarizer.tokenizer([summarizer.model_input(dialogue)], return_tensors="pt")
        ids = summarizer.model.generate(**encoded, max_new_tokens=12)
        expected.append(summarizer.tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    assert summarizer.summarize(DIALOGUES, max_new_tokens=12) == expected


def test_a_length_in_new_tokens_decodes_without_a_warning_per_batch(t5_model_dir):
    """Issue 24.18: the model's max_length and a max_new_tokens made generate() warn on every batch."""
    summarizer = DialogueSummarizer(t5_model_dir, batch_size=1)
    assert summarizer.model.generation_config.max_length is not None  # as nearly every config has
    import logging

    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    generation_logger = logging.getLogger("transformers.generation.utils")  # the library's own handler: no caplog
    generation_logger.addHandler(handler)
    try:
        summarizer.summarize(DIALOGUES, max_new_tokens=5)
    finally:
        generation_logger.removeHandler(handler)
    assert not [w for w in warnings if "seem to have been set" in w], warnings
    assert summarizer.model.generation_config.max_length is not None  # given back after the call


def test_summarize_command_reads_jsonl_and_writes_jsonl(t5_model_dir, tmp_path, capsys, monkeypatch):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"d{i}", "dialogue": d}) + "\n" for i, d in enumerate(DIALOGUES)))
    out = tmp_path / "out.jsonl"
    completed = _cli(
        capsys, monkeypatch, "summarize", "--model", str(t5_model_dir), "--input", str(source), "--output", str(out)
    )
    assert completed.returncode == 0, completed.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["d0", "d1"] and all(isinstance(r["summary"], str) for r in rows)


def test_summarize_command_reads_stdin_text(t5_model_dir):
    completed = run_cli("summarize", "--model", str(t5_model_dir), input="\n\n".join(DIALOGUES))
    assert completed.returncode == 0, completed.stderr
    assert len(completed.stdout.splitlines()) == 2


def test_summarize_decodes_with_the_models_generation_config_unless_a_flag_overrides_it(
    t5_model_dir, tmp_path, capsys, monkeypatch
):
    from tune_dialsum.export import set_generation_config

    set_generation_config(t5_model_dir, {"num_beams": 2, "max_new_tokens": 3})  # as a tuned export holds
    summarizer = DialogueSummarizer(t5_model_dir)
    assert (summarizer.model.generation_config.num_beams, summarizer.model.generation_config.max_new_tokens) == (2, 3)
    tuned = summarizer.summarize(DIALOGUES)
    assert tuned == summarizer.summarize(DIALOGUES, num_beams=2, max_new_tokens=3)
    assert tuned != summarizer.summarize(DIALOGUES, num_beams=1, max_new_tokens=12)
    default = _cli(capsys, monkeypatch, "summarize", "--model", str(t5_model_dir), input=DIALOGUES[0])
    flagged = _cli(
        capsys, monkeypatch, "summarize", "--model", str(t5_model_dir), "--max-new-tokens", "12", input=DIALOGUES[0]
    )
    assert default.returncode == flagged.returncode == 0, default.stderr + flagged.stderr
    assert default.stdout.strip() == tuned[0]
    assert flagged.stdout.strip() == summarizer.summarize(DIALOGUES[:1], max_new_tokens=12)[0]


def test_plain_text_input_splits_on_blank_lines(tmp_path):
    records = read_dialogues(None, text="A: hi\nB: yo\n\n\nA: bye\n")
    assert [r["dialogue"] for r in records] == ["A: hi\nB: yo", "A: bye"]


def test_evaluate_figures_equal_compute_rouge_on_its_predictions(t5_model_dir, tmp_path, capsys, monkeypatch):
    predictions = tmp_path / "predictions.jsonl"
    completed = _cli(
        capsys,
        monkeypatch,
        "evaluate",
        "--model",
        str(t5_model_dir),
        "--data",
        str(BUNDLED_DATA),
        "--split",
        "test",
        "--max-samples",
        "20",
        "--predictions",
        str(predictions),
    )
    assert completed.returncode == 0, completed.stderr
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 20
    scores = compute_rouge([r["prediction"] for r in rows], [r["reference"] for r in rows])
    for key, value in scores.items():
        assert f"{key:10s} {value:.4f}" in completed.stdout


def test_summarize_refuses_a_directory_that_is_not_a_model(tmp_path, capsys, monkeypatch):
    completed = _cli(capsys, monkeypatch, "summarize", "--model", str(tmp_path), input="A: hi")
    assert completed.returncode == 2 and "not a model directory" in completed.stderr


def test_the_readmes_transformers_lines_load_the_export_and_decode_as_summarize_does(t5_model_dir, tmp_path):
    """The README's plain-transformers block, run as it is written (only the model path swapped in)."""
    import re
    import subprocess
    import sys

    from tests.conftest import REPO
    from tune_dialsum.export import set_generation_config

    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- transformers-snippet[^>]*-->\n```python\n(.*?)```", readme, re.S).group(1)
    assert "AutoModelForSeq2SeqLM" in block and "generate(" in block and "pipeline" not in block
    recipe = {"dialogue_format": "standard", "prefix": "summarize: ", "max_input_length": 128}
    (t5_model_dir / RECIPE_FILE).write_text(json.dumps(recipe))
    set_generation_config(t5_model_dir, {"num_beams": 2, "max_new_tokens": 6, "no_repeat_ngram_size": 2})
    script = tmp_path / "snippet.py"
    script.write_text(block.replace("models/best", str(t5_model_dir)))
    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == DialogueSummarizer(t5_model_dir).summarize(DIALOGUES[:1])[0]
