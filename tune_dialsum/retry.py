"""Whether a failed trial is worth another attempt, and the record that ends a hopeless retry at once.

Ray retries a failed trial (``max_failures``); a diverged loss, running out of memory or a bad
setting fail the same way every time, so the first attempt records its error in the trial's
directory and the retry raises it again before training.
"""

from __future__ import annotations

import json
import logging

from tune_dialsum import locations
from tune_dialsum.contract import NOT_RETRYABLE_FILE, TRIAL_DIR_PREFIX
from tune_dialsum.errors import ModelNotFoundError, TuneDialsumError, one_line
from tune_dialsum.experiment_context import ExperimentContext

logger = logging.getLogger(__name__)


class TrialDiverged(RuntimeError):
    """The loss became NaN or infinite: more steps cannot help this trial."""


class NotRetryable(RuntimeError):
    """A trial's earlier attempt failed in a way that trying again cannot fix."""


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt at a trial that raised ``error`` could end differently.

    A diverged loss, running out of memory and a bad setting fail the same way every time; a lost
    worker or node, or an I/O hiccup, may not.
    """
    import torch

    if isinstance(error, ModelNotFoundError):  # checked before any trial: in a trial, a hub or disk hiccup
        return True
    if isinstance(
        error, (TrialDiverged, NotRetryable, torch.OutOfMemoryError, TuneDialsumError, ValueError, TypeError)
    ):
        return False
    return not (isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def not_retryable_marker(context: ExperimentContext, trial_id: str) -> str | None:
    if context.experiment_location is None:
        return None
    return locations.join(context.experiment_location, f"{TRIAL_DIR_PREFIX}{trial_id}", NOT_RETRYABLE_FILE)


def record_not_retryable(marker: str, error: Exception) -> None:
    try:
        locations.write_text(marker, json.dumps({"error": f"{type(error).__name__}: {one_line(error)}"}))
    except (OSError, TuneDialsumError) as failed:  # the trial's own error is the one to report
        logger.warning("could not record that %s is not retryable: %s", error, one_line(failed))
