"""Every use of Ray's and Optuna's internals, each behind one small function.

A Ray or Optuna release may move any of these; tests/test_ray_compat.py has a test for each, so
that an upgrade fails there, naming what moved, and not somewhere in a search. pyproject.toml pins
Ray and Optuna below their next major versions.

- Ray's OptunaSearch keeps the Optuna trial of each Tune trial, the study, and the Tune trials it
  has told Optuna about in private attributes (optuna_search.py reads and corrects them on resume).
- Optuna's study storage addresses a trial by an internal id (a resumed search labels and re-reads
  trials that an earlier driver asked for).
- ``ray._private``: the session directory (what a search leaves in it), and the flag that keeps a
  Ray already imported on loopback.
- Ray Train V2's controller callback (``UserCallback.after_report``), which relays a data-parallel
  trial's reports to Tune.
- A placement group addressed by the hex id ``placement_group_table`` lists.
- Ray Tune's saved experiment state (``experiment_state-*.json``): which trials a run recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

from tune_dialsum.contract import EXPERIMENT_STATE_GLOB


def optuna_trials(searcher) -> dict:
    """Tune trial id -> the Optuna trial OptunaSearch asked for it."""
    return searcher._ot_trials


def optuna_study(searcher):
    """The Optuna study behind an OptunaSearch."""
    return searcher._ot_study


def told_trials(searcher) -> set[str]:
    """The Tune trials whose end OptunaSearch has told the study (it ignores later results of theirs)."""
    return searcher._completed_trials


def stored_trial(study, trial):
    """The study's record (a FrozenTrial) of ``trial``, as its storage holds it now."""
    return study._storage.get_trial(trial._trial_id)


def label_trial(study, trial, key: str, value) -> None:
    """Set a user attribute on a trial of ``study`` that may still be RUNNING (``trial``: a FrozenTrial)."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def session_dir() -> Path | None:
    """This process's local Ray session directory; None where no Ray runs here (no public accessor)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return None if node is None else Path(node.get_session_dir_path())


def keep_imported_ray_on_loopback() -> None:
    """The loopback setting Ray read at import, set again for a Ray imported before it was asked for."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def train_controller_callback() -> type:
    """The base class of a Ray Train V2 controller callback, whose ``after_report(run_context, metrics,
    checkpoint)`` runs on every report of rank 0."""
    from ray.train.v2.api.callback import UserCallback

    return UserCallback


def placement_group(group_id: str):
    """The placement group whose hex id ``ray.util.placement_group_table`` lists."""
    import ray
    from ray.util.placement_group import PlacementGroup

    return PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id)))


def recorded_trial_ids(experiment_dir: Path) -> set[str]:
    """Every trial any run of the experiment recorded in its saved state (Ray's experiment_state-*.json)."""
    ids = set()
    for state_file in Path(experiment_dir).glob(EXPERIMENT_STATE_GLOB):
        try:
            trial_data = json.loads(state_file.read_text())["trial_data"]
            ids |= {json.loads(trial_json)["trial_id"] for trial_json, _ in trial_data}
        except (OSError, ValueError, KeyError, TypeError):  # a state file being written: its trials are in results
            continue
    return ids
