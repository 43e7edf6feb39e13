"""The Optuna side of the search: the sampler, and an OptunaSearch that records stopped trials honestly."""

from __future__ import annotations

import math

from tune_dialsum.ray_compat import label_trial, optuna_study, optuna_trials, stored_trial, told_trials
from tune_dialsum.space import SearchSpace


def make_sampler(space: SearchSpace, seed_offset: int = 0):
    """Optuna's sampler for ``space``; ``seed_offset`` (the trials already in the study) when a search continues."""
    import optuna

    seed = space.seed + seed_offset
    if space.trials.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar keeps trials that run at the same time from being sampled on top of each other.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.trials.startup_trials, constant_liar=True)


def pruned_aware_optuna_search(*, time_attr: str, full_budget: int, **optuna_search_arguments):
    """Ray's OptunaSearch, telling Optuna the truth about stopped trials (see PrunedAwareOptunaSearch)."""
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class PrunedAwareOptunaSearch(OptunaSearch):
        """OptunaSearch that tells Optuna the truth about trials the scheduler stopped.

        Ray's OptunaSearch marks a trial ASHA stopped as COMPLETE with its last,
        low-fidelity score, and TPE then learns from it as if it were a full
        run. Here such a trial is PRUNED, with its intermediate values keyed by
        training step, which is how Optuna's own pruners record it.
        """

        def __init__(self, *args, time_attr: str, full_budget: int, **kwargs):
            super().__init__(*args, **kwargs)
            self._time_attr = time_attr
            self._full_budget = full_budget
            # Tune trials that had failed (FAIL in the study) and that a resume restarted: an ended
            # Optuna trial cannot take new values, so their curve is gathered here and recorded anew.
            self._restarted: dict[str, dict[int, float]] = {}

        def restore(self, checkpoint_path: str) -> None:
            """Restore, then close Optuna trials asked for after the last saved state.

            A driver killed between asking Optuna for a trial and saving the
            experiment leaves that trial RUNNING in the study forever; Tune never
            heard of it, so it is marked FAIL (and says why) rather than left open.
            One killed between telling Optuna a trial ended and saving the
            experiment leaves a trial Tune will run on whose study record is final.
            """
            super().restore(checkpoint_path)
            study, asked, told = optuna_study(self), optuna_trials(self), told_trials(self)
            known = {trial.number for trial in asked.values()}
            for trial_id, ot_trial in asked.items():
                state = stored_trial(study, ot_trial).state
                if state == TrialState.FAIL:
                    told.discard(trial_id)  # Tune restarts failed trials on resume
                    self._restarted[trial_id] = {}
                elif state.is_finished():
                    # Told before the driver died, though Tune's saved state still had it running: Tune
                    # runs it on from its checkpoint, and the study keeps what it was told (an ended
                    # Optuna trial takes no new values: reporting one would fail the trial).
                    told.add(trial_id)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if trial.number not in known:
                    label_trial(study, trial, "abandoned", "asked before the driver died; never ran")
                    study.tell(trial.number, state=TrialState.FAIL)

        def suggest(self, trial_id: str):
            config = super().suggest(trial_id)
            if isinstance(config, dict):  # drop the family-qualified names (learning_rate@t5)
                config = {key: value for key, value in config.items() if "@" not in key}
            return config

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id in told_trials(self) or self.metric not in result:
                return
            # Keyed by the training budget, not by Tune's report count, so curves line up across trials.
            value, budget = result[self.metric], int(result[self._time_attr])
            if trial_id in self._restarted:
                self._restarted[trial_id][budget] = value
            else:
                optuna_trials(self)[trial_id].report(value, budget)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in told_trials(self):
                return
            if trial_id in self._restarted:
                self._record_restarted(trial_id, result, error)
                return
            if result and not error and self.metric in result:
                # Tune hands the last result to on_trial_complete only; keep it as an intermediate value too.
                self.on_trial_result(trial_id, result)
                if result.get(self._time_attr, self._full_budget) < self._full_budget:
                    optuna_study(self).tell(optuna_trials(self)[trial_id], state=TrialState.PRUNED)
                    told_trials(self).add(trial_id)
                    return
            super().on_trial_complete(trial_id, result, error)

        def _record_restarted(self, trial_id: str, result: dict | None, error: bool) -> None:
            """A restarted trial that ended: its FAIL record stays, and its new outcome is added beside it."""
            import optuna

            told_trials(self).add(trial_id)
            curve = self._restarted.pop(trial_id)
            if error or not result or self.metric not in result:
                return  # failed again: the FAIL record says so already
            curve[int(result[self._time_attr])] = result[self.metric]
            study = optuna_study(self)
            failed = stored_trial(study, optuna_trials(self)[trial_id])
            complete = result[self._time_attr] >= self._full_budget and math.isfinite(result[self.metric])
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.COMPLETE if complete else TrialState.PRUNED,
                    value=result[self.metric] if complete else None,
                    params=failed.params,
                    distributions=failed.distributions,
                    intermediate_values={**failed.intermediate_values, **curve},
                    user_attrs={"tune_trial_id": trial_id, "resumed_after_failure": failed.number},
                )
            )

    return PrunedAwareOptunaSearch(time_attr=time_attr, full_budget=full_budget, **optuna_search_arguments)
