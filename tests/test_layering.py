"""The package's import direction: each module imports only modules listed before it here.

Readers sit below the stages that use them, stages below the search, the search below the command
line. A new import that points up the list (and so any circle) fails here, naming the arrow. Imports
inside functions count: deferring an import hides a circle, it does not open it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LAYERS = [
    # the names everything shares, and leaves that need nothing of tune_dialsum
    [
        "contract",
        "errors",
        "atomic",
        "uris",
        "space_schema",
        "adapters",
        "lock",
        "generation",
        "executor",
        "ray_compat",
        "data_parallel",
        "data.cleaning",
        "data.splits",
    ],
    ["data.synthetic", "data.formats", "data.loading", "data", "metrics"],
    # what a run is made of: models, storage, the space, the trainer
    [
        "models",
        "locations",
        "storage",
        "space_model",
        "space_checks",
        "space_parse",
        "space",
        "experiment_context",
        "rungs",
        "train",
        "inference",
        "tune_dialsum",
    ],
    ["retry", "worker_memory", "trial_data"],
    # scoring a model on a split: the trainable scores its last checkpoint, the stages after the trials the rest
    ["scoring", "trainable", "cluster", "optuna_search", "tracking"],
    # readers of an experiment: its checkpoints, its recorded choices
    ["checkpoints", "choices", "analysis"],
    # the stages after the trials, in the order each may use the ones before it
    ["selection", "early_rescoring", "export", "decoding", "tune_decoding", "refit", "report"],
    ["outcome", "finish"],
    ["tuner", "search", "dashboard"],
    ["cli", "__main__"],
]
ORDER = [module for layer in LAYERS for module in layer]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO / "tune_dialsum").with_suffix("").parts
    name = ".".join(p for p in parts if p != "__init__")
    return name or "tune_dialsum"


def _imports(path: Path) -> set[str]:
    """Every tune_dialsum module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tune_dialsum"):
            module = node.module.removeprefix("tune_dialsum").lstrip(".") or "tune_dialsum"
            for alias in node.names:  # `from tune_dialsum import selection` imports the module
                submodule = f"{module}.{alias.name}" if module != "tune_dialsum" else alias.name
                found.add(submodule if submodule in ORDER else module)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("tune_dialsum.") for a in node.names if a.name.startswith("tune_dialsum.")}
    return found


def test_every_module_has_a_place_in_the_order():
    modules = {_module_name(p) for p in (REPO / "tune_dialsum").rglob("*.py")}
    assert modules == set(ORDER), "place new modules in LAYERS (and remove the ones deleted)"


def test_imports_point_down_the_order():
    upward = []
    for path in sorted((REPO / "tune_dialsum").rglob("*.py")):
        name = _module_name(path)
        for imported in _imports(path) - {name}:
            if ORDER.index(imported) > ORDER.index(name):
                upward.append(f"{name} -> {imported}")
    assert not upward, "imports that point up the order (or close a circle): " + ", ".join(upward)


def test_the_command_line_and_the_search_driver_load_no_rouge_scorer():
    """rouge-score's stemmer loads all of nltk and scipy (about a second): only a process that scores pays it."""
    code = "import sys, tune_dialsum.cli, tune_dialsum.search, tune_dialsum.selection; print(sorted(m for m in "
    code += "('rouge_score', 'nltk', 'scipy') if m in sys.modules))"
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "[]"
