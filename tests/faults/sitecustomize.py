"""Fault injection for the reliability tests; never installed, only put on PYTHONPATH by them.

Python imports ``sitecustomize`` at start-up in every process, Ray's trial workers included.
When ``TUNE_DIALSUM_TEST_FAULTS`` is set (``KIND@STEP:FORMAT`` entries, comma-separated), the
trainer of every trial whose dialogue format is FORMAT raises at training step STEP:

- ``oom``: ``torch.OutOfMemoryError``, every time (a trial that cannot fit);
- ``raise``: ``RuntimeError``, every time;
- ``once``: ``RuntimeError`` the first time only (a transient fault that a retry survives).

Every fault that fires leaves a file ``fired-KIND-FORMAT-*`` in ``TUNE_DIALSUM_TEST_FAULT_MARKERS``,
so a test can count how many times each one was trained into.

A cluster's workers do not inherit the environment of the test's driver, and the cluster outlives
one search: there, ``TUNE_DIALSUM_TEST_FAULTS_FILE`` names a file holding the entries on its first
line and the markers directory on its second, read each time a trainer starts (no file: no fault).
"""

import hashlib
import importlib.abc
import importlib.util
import os
import sys
import uuid
from pathlib import Path

SPECS = os.environ.get("TUNE_DIALSUM_TEST_FAULTS", "")
MARKERS = os.environ.get("TUNE_DIALSUM_TEST_FAULT_MARKERS", "/tmp")
SPECS_FILE = os.environ.get("TUNE_DIALSUM_TEST_FAULTS_FILE")


def _faults() -> tuple[list[tuple[str, int, str]], Path]:
    """The faults to inject now, and where to mark those that fire."""
    specs, markers = SPECS, MARKERS
    if SPECS_FILE:
        lines = Path(SPECS_FILE).read_text().splitlines() if Path(SPECS_FILE).is_file() else ["", ""]
        specs, markers = lines[0], lines[1]
    faults = []
    for spec in filter(None, specs.split(",")):
        kind, _, rest = spec.partition("@")
        step, _, dialogue_format = rest.partition(":")
        faults.append((kind, int(step), dialogue_format))
    return faults, Path(markers)


def _inject(train_module) -> None:
    import torch
    from transformers import TrainerCallback

    class InjectedFault(TrainerCallback):
        def __init__(self, dialogue_format: str) -> None:
            self.dialogue_format = dialogue_format
            self.faults, self.markers = _faults()

        def on_step_end(self, args, state, control, **kwargs):
            for kind, step, dialogue_format in self.faults:
                if state.global_step != step or dialogue_format != self.dialogue_format:
                    continue
                if kind == "once":  # per trial, by its directory's name: a resumed trial runs in a new session
                    marker = self.markers / hashlib.sha1(Path.cwd().name.encode()).hexdigest()
                    if marker.exists():
                        continue
                    marker.touch()
                (self.markers / f"fired-{kind}-{dialogue_format}-{uuid.uuid4().hex}").touch()
                if kind == "oom":
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test)")
                raise RuntimeError(f"injected failure at step {step}")

    original = train_module.DialogueSummarizationTrainer.build_trainer

    def build_trainer(self, *args, **kwargs):
        trainer = original(self, *args, **kwargs)
        trainer.add_callback(InjectedFault(self.dialogue_format))
        return trainer

    train_module.DialogueSummarizationTrainer.build_trainer = build_trainer


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "tune_dialsum.train":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _inject(module)

        spec.loader.exec_module = exec_module
        return spec


if SPECS or SPECS_FILE:
    sys.meta_path.insert(0, _PatchOnImport())
