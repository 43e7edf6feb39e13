"""Experiment tracking with MLflow: one run per search, one nested run per trial.

The search opens its parent run before the first trial (:func:`open_search_run`) and closes it
after the export (:func:`close_search_run`), with the exported model and the analysis report as
its artifacts. Each trial is a child run, logged from the driver by Ray Tune's MLflow callback,
extended here (:func:`trial_runs_callback`) to nest the runs, log every report at its budget
(examples, steps or epochs: the step axis ASHA ranks on) and tag how the trial ended.

The parent's id is kept in ``<experiment>/tracking.json``: a resumed search continues the same
parent run, and a trial that continues keeps its child run. Without a tracking URI
(``tracking.uri``, ``--track-uri`` or ``MLFLOW_TRACKING_URI``) runs go to a local store in
``<experiment>/mlruns`` (SQLite and an artifact folder: MLflow 3 retired the plain-file store).
``mlflow ui --backend-store-uri sqlite:///<experiment>/mlruns/mlflow.db`` shows it.

mlflow is an optional extra (``pip install 'tune_dialsum[tracking]'``); Ray is imported lazily.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from tune_dialsum.atomic import atomic_write_text
from tune_dialsum.contract import ERROR, MLRUNS_DIR, TRACKING_FILE, trial_state
from tune_dialsum.errors import UsageError, one_line
from tune_dialsum.space_schema import TrackingSection
from tune_dialsum.uris import refuse_credentials

logger = logging.getLogger(__name__)

TRIAL_ID_TAG = "tune_dialsum.trial_id"
STATE_TAG = "tune_dialsum.state"  # TERMINATED, STOPPED (by the scheduler) or ERROR, as in the summary
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag: its UI shows children under the parent


def require_mlflow():
    """The mlflow module, or a one-line error naming the extra that brings it."""
    try:
        import mlflow
    except ImportError:
        raise UsageError(
            "experiment tracking with MLflow needs the mlflow package: pip install 'tune_dialsum[tracking]' "
            "(or leave out --track / the space's tracking section)"
        ) from None
    return mlflow


@dataclass(frozen=True)
class TrackedSearch:
    """Where a search's runs go: the store, the MLflow experiment and the search's parent run."""

    uri: str
    experiment_name: str
    experiment_id: str
    parent_run_id: str

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


def tracking_uri(setting: str | None, experiment_dir: Path, remote: bool) -> str:
    """The space's (or --track-uri's) URI, else MLFLOW_TRACKING_URI, else a store inside the experiment.

    A path names a local store: a SQLite database in it (MLflow 3 refuses plain-file stores).
    Checked before anything is written, so that a refusal leaves no experiment behind.
    """
    uri = setting or os.environ.get("MLFLOW_TRACKING_URI")
    refuse_credentials(uri, "tracking.uri" if setting else "MLFLOW_TRACKING_URI")
    if uri:
        # a path has a separator (or starts like one); bare words such as `databricks` are MLflow's own URIs
        is_path = not urlparse(uri).scheme and ("/" in uri or uri.startswith((".", "~")))
        return f"sqlite:///{Path(uri).expanduser().resolve() / 'mlflow.db'}" if is_path else uri
    if remote:
        raise UsageError(
            "tracking: the experiment is at a URI, so its runs cannot go inside it; name a tracking store with "
            "--track-uri URI (the space's tracking.uri) or, also when resuming, MLFLOW_TRACKING_URI"
        )
    return f"sqlite:///{(experiment_dir / MLRUNS_DIR).resolve() / 'mlflow.db'}"


def open_search_run(
    tracking: TrackingSection, name: str, experiment_dir: Path, remote: bool, params: dict
) -> TrackedSearch:
    """Start the search's parent run, or reopen the one ``tracking.json`` names (a resumed search)."""
    require_mlflow()
    record = experiment_dir / TRACKING_FILE
    if record.is_file():
        tracked = TrackedSearch(**json.loads(record.read_text()))
        tracked.client().update_run(tracked.parent_run_id, status="RUNNING")
        logger.info("tracking: continuing MLflow run %s at %s", tracked.parent_run_id, tracked.uri)
        return tracked
    uri = tracking_uri(tracking.uri, experiment_dir, remote)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        # a local store keeps its artifacts beside its database (MLflow's default is relative to the cwd)
        database = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        artifacts = (database.resolve().parent / "artifacts").as_uri() if database is not None else None
        experiment_id = client.create_experiment(name, artifact_location=artifacts)
    run = client.create_run(experiment_id, run_name=name, tags={"tune_dialsum.experiment": str(experiment_dir)})
    _log_params(client, run.info.run_id, params)
    tracked = TrackedSearch(uri, name, experiment_id, run.info.run_id)
    atomic_write_text(record, json.dumps(asdict(tracked), indent=2))
    print(f"tracking: MLflow run {tracked.parent_run_id} of experiment {name!r} at {uri}")
    return tracked


def close_search_run(tracked: TrackedSearch, outcome, report_dir: Path | None) -> None:
    """Log the search's result to its parent run (scores, the exported model, the report) and end it."""
    client = tracked.client()
    run_id = tracked.parent_run_id
    metrics = {}
    for prefix, scores in (("validation", outcome.full_validation), ("test", outcome.test)):
        metrics.update({f"{prefix}_{key}": value for key, value in (scores or {}).items() if _is_number(value)})
    metrics["trials_stopped_early"] = len(outcome.stopped)
    metrics["trials_failed"] = len(outcome.failed)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    if outcome.best is not None:
        client.set_tag(run_id, "tune_dialsum.best_trial_id", outcome.best.trial_id)
    if outcome.best_model_dir is not None and Path(outcome.best_model_dir).is_dir():
        client.log_artifacts(run_id, str(outcome.best_model_dir), "best_model")
    if report_dir is not None:
        log_report(tracked, report_dir)
    # trials left running (an interrupted search: resuming reopens their runs; a trial set aside after a
    # crash: never) are not left looking alive
    running = client.search_runs(
        [tracked.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{run_id}' and attributes.status = 'RUNNING'",
    )
    for child in running:
        client.set_terminated(child.info.run_id, status="KILLED")
    client.set_terminated(run_id, status="KILLED" if outcome.unfinished else "FINISHED")


def log_report(tracked: TrackedSearch, report_dir: Path) -> None:
    """The analysis report (page and plots) as the parent run's ``report`` artifact."""
    tracked.client().log_artifacts(tracked.parent_run_id, str(report_dir), "report")


def read_tracking(experiment_dir: Path) -> TrackedSearch | None:
    """The tracking record of an experiment, None where it was not tracked."""
    record = Path(experiment_dir) / TRACKING_FILE
    return TrackedSearch(**json.loads(record.read_text())) if record.is_file() else None


def trial_runs_callback(tracked: TrackedSearch, time_attr: str, max_budget: float, metrics: tuple[str, ...]):
    """Ray Tune's MLflowLoggerCallback, logging each trial as a child run of the search's run.

    The runs are keyed by trial id (a restored experiment has new Trial objects) and found again on
    resume. A tracking store that fails (a server gone) costs its records, logged as warnings, never
    the search.
    """
    from mlflow.entities import Metric
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class TrialRuns(MLflowLoggerCallback):
        def setup(self, *args, **kwargs):
            super().setup(*args, **kwargs)
            self.client = tracked.client()
            existing = self.client.search_runs(
                [tracked.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{tracked.parent_run_id}'"
            )
            self._run_of = {run.data.tags.get(TRIAL_ID_TAG): run.info.run_id for run in existing}

        def run_of(self, trial) -> str:
            """The trial's run: created on first use (Ray may end a trial it never started), reopened on resume."""
            run_id = self._run_of.get(trial.trial_id)
            if run_id is None:
                tags = {PARENT_TAG: tracked.parent_run_id, TRIAL_ID_TAG: trial.trial_id, "trial_name": str(trial)}
                run_id = self.client.create_run(tracked.experiment_id, run_name=str(trial), tags=tags).info.run_id
                self._run_of[trial.trial_id] = run_id
            return run_id

        @_not_fatal
        def log_trial_start(self, trial):
            run_id = self.run_of(trial)
            self.client.update_run(run_id, status="RUNNING")  # a continued trial runs again
            _log_params(self.client, run_id, trial.config)

        @_not_fatal
        def log_trial_result(self, iteration, trial, result):
            step = int(result.get(time_attr) or result.get("training_iteration", 0))  # the budget ASHA counts
            now = int(time.time() * 1000)
            scores = [Metric(key, float(result[key]), now, step) for key in metrics if _is_number(result.get(key))]
            self.client.log_batch(self.run_of(trial), metrics=scores)

        @_not_fatal
        def log_trial_end(self, trial, failed: bool = False):
            run_id = self.run_of(trial)
            used = (trial.last_result or {}).get(time_attr, 0)
            state = ERROR if failed else trial_state(used, max_budget, done=True, failed=False)
            self.client.set_tag(run_id, STATE_TAG, state)
            self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    return TrialRuns(tracking_uri=tracked.uri, experiment_name=tracked.experiment_name)


def _not_fatal(method):
    """A callback method whose failure is a warning: a tracker that fails must not stop the search."""

    @functools.wraps(method)
    def logged(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 (the store's errors are many: HTTP, SQL, file system)
            logger.warning("tracking: %s failed, the search goes on: %s", method.__name__, one_line(error))

    return logged


def _log_params(client, run_id: str, values: dict) -> None:
    """MLflow params, each value as text (as MLflow stores them), in batches of MLflow's limit of 100."""
    from mlflow.entities import Param

    params = [Param(str(key), str(value)) for key, value in values.items()]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # NaN is not logged
