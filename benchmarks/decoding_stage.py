"""The decoding stage against searching beams in training: test ROUGE-L gained, wall time, compute saved.

Per seed, two searches with the same space, trial count, data and model:

- two-stage: trials ranked with greedy decoding, then the decoding stage (beams, length penalty,
  no-repeat n-grams) on the best checkpoint, scored on the whole validation split;
- beams in training: ``generation_num_beams`` searched as a training setting (as bart.yaml did),
  no decoding stage.

Printed per seed and as medians (range) over seeds: the exported model's test ROUGE-L with greedy
decoding and with the tuned decoding (the gain), the decoding stage's wall time as a fraction of
the training search's, the test ROUGE-L and training wall time of the beams-in-training search, and
what trying the stage's decodings by retraining would have cost (decoding trials x the chosen
trial's training examples).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

DECODING = {
    "search": {
        "num_beams": {"choice": [1, 2, 4]},
        "length_penalty": {"uniform": [0.6, 2.0]},
        "no_repeat_ngram_size": {"choice": [0, 3]},
    },
    "num_samples": 8,
}
BEAMS_IN_TRAINING = {"choice": [1, 2, 4]}


def one_seed(args, data_dir: Path, model_dir: Path, storage: Path) -> dict:
    from tune_dialsum.analysis import Experiment
    from tune_dialsum.choices import read_decoding

    stamp = int(time.time())
    space = _common.search_space(data_dir, model_dir, storage, f"decoding-two-stage-{args.seed}-{stamp}", args)
    space["decoding"] = {**DECODING, "num_samples": args.decoding_trials}
    outcome, wall = _common.run(space)
    decoding = read_decoding(outcome.experiment_dir)
    if outcome.decoding is None or decoding is None:
        sys.exit(f"seed {args.seed}: the decoding stage did not run (see the warning above); nothing to measure")
    experiment = Experiment.load(outcome.location)
    tuning = json.loads((outcome.best_model_dir / "tuning.json").read_text())
    chosen_spent = experiment.trials.set_index("trial_id").loc[outcome.best.trial_id, experiment.time_attr]
    two_stage = {
        "test_tuned": outcome.test["rougeL"],
        "test_greedy": (outcome.test_training_decoding or outcome.test)["rougeL"],
        "decoding_wall": decoding["wall_seconds"],
        "training_wall": wall - decoding["wall_seconds"],
        "spent": int(experiment.trials[experiment.time_attr].sum()),
        "retraining_equivalent": args.decoding_trials * int(chosen_spent),
        "chosen": tuning["decoding"]["settings"],  # None: no decoding met the constraints
    }
    print(f"seed {args.seed} two-stage      " + json.dumps(two_stage, default=str), flush=True)

    space = _common.search_space(data_dir, model_dir, storage, f"decoding-in-training-{args.seed}-{stamp}", args)
    space["search"]["generation_num_beams"] = BEAMS_IN_TRAINING
    outcome, wall = _common.run(space)
    experiment = Experiment.load(outcome.location)
    in_training = {
        "test": outcome.test["rougeL"],
        "training_wall": wall,
        "spent": int(experiment.trials[experiment.time_attr].sum()),
        "chosen_beams": outcome.best.snapshot["config"]["generation_num_beams"],
    }
    print(f"seed {args.seed} beams-training " + json.dumps(in_training), flush=True)
    return {"two_stage": two_stage, "in_training": in_training}


def main() -> None:
    parser = _common.comparison_parser(__doc__.splitlines()[0])
    parser.add_argument("--decoding-trials", type=int, default=8, help="decoding trials after the training search")
    args = parser.parse_args()
    runs = _common.over_seeds(args, one_seed)

    def show(values: list[float], digits: int = 4) -> str:
        values = sorted(values)
        return f"{statistics.median(values):.{digits}f} (range {values[0]:.{digits}f}..{values[-1]:.{digits}f})"

    two, beams = [r["two_stage"] for r in runs], [r["in_training"] for r in runs]
    unit = "training examples" if args.bed == "bundled" else "training steps"
    print(f"test ROUGE-L, greedy decoding:           {show([r['test_greedy'] for r in two])}")
    print(f"test ROUGE-L, tuned decoding:            {show([r['test_tuned'] for r in two])}")
    print(f"gain from the decoding stage:            {show([r['test_tuned'] - r['test_greedy'] for r in two])}")
    print(f"test ROUGE-L, beams searched in training: {show([r['test'] for r in beams])}")
    print(f"decoding wall / training search wall:    {show([r['decoding_wall'] / r['training_wall'] for r in two], 3)}")
    print(
        f"training wall, beams in training / two-stage training: "
        f"{show([b['training_wall'] / t['training_wall'] for b, t in zip(beams, two, strict=True)], 2)}"
    )
    print(
        f"{unit}: two-stage {show([r['spent'] for r in two], 0)}, beams in training {show([r['spent'] for r in beams], 0)}; "
        f"the stage's decodings tried by retraining the chosen trial: {show([r['retraining_equivalent'] for r in two], 0)}"
    )
    print(
        f"decoding_stage: {len(runs)} seeds, {args.trials} trials each, {args.decoding_trials} decoding trials, bed {args.bed}"
    )


if __name__ == "__main__":
    main()
