"""The winner's curse, measured: the score a model is selected by against its score on data it was not selected on.

One search per seed on a DialogSum subset (validation subset for ASHA, as users run it). For two rules
it prints the chosen checkpoint's ROUGE-L on the validation subset, on all of validation and on test:

- max-subset: the maximum over every (trial, report) of the subset score (what tune_dialsum did before);
- rescored: the best on all of validation among the selection.top_k best on the subset (what it does now).

The last lines give, over seeds, the mean and spread of the optimism (the figure selected on minus
the test figure) of each rule, and of the test score each rule exports.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def _test_rouge_l(record, settings) -> float:
    from tune_dialsum.generation import trial_decoding
    from tune_dialsum.scoring import score_model

    return score_model(str(record.path), settings, "test", trial_decoding(record.snapshot["config"]))["rougeL"]


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--max-budget", type=int, default=600, help="training steps of a full trial")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--top-k", type=int, default=3)
    args = p.parse_args()
    data_dir, model_dir = _common.dialogsum_subset(args)
    storage = model_dir.parent / "ray_results"
    from tune_dialsum.checkpoints import best_checkpoint, find_checkpoints, find_record
    from tune_dialsum.choices import read_selection
    from tune_dialsum.experiment_context import experiment_context
    from tune_dialsum.space import parse_space

    rows = []
    for seed in args.seeds:
        args.seed = seed
        name = f"selection-{seed}-{int(time.time())}"
        space_dict = _common.search_space(data_dir, model_dir, storage, name, args)
        space_dict["selection"] = {"top_k": args.top_k}
        outcome, wall = _common.run(space_dict)
        context = experiment_context(parse_space(space_dict))
        records = find_checkpoints(outcome.experiment_dir)
        naive = best_checkpoint(records, "rougeL", "max")
        chosen = read_selection(outcome.experiment_dir)["chosen"]
        ours = find_record(records, chosen["trial_id"], chosen["step"])
        full_of = {(c.record.trial_id, c.record.step): c.full["rougeL"] for c in outcome.candidates}
        row = {
            "seed": seed,
            "wall_s": round(wall),
            "max_subset": {
                "subset": naive.scores["rougeL"],
                "full_validation": full_of[(naive.trial_id, naive.step)],
                "test": outcome.test["rougeL"] if naive.path == ours.path else _test_rouge_l(naive, context),
            },
            "rescored": {
                "subset": ours.scores["rougeL"],
                "full_validation": chosen["full_validation"],
                "test": outcome.test["rougeL"],
            },
        }
        rows.append(row)
        print(json.dumps(row))
    print(
        f"machine: {_common.machine()}; DialogSum: {args.train_size} train, validation subset {args.eval_size} of "
        f"{outcome.full_validation['examples']}, test {outcome.test['examples']}; {args.trials} trials per seed"
    )
    for rule, selected_on in (("max_subset", "subset"), ("rescored", "full_validation")):
        optimism = [r[rule][selected_on] - r[rule]["test"] for r in rows]
        tests = [r[rule]["test"] for r in rows]
        spread = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
        print(
            f"{rule:10s} selected on {selected_on:15s}: optimism (selected-on minus test ROUGE-L) "
            f"{statistics.mean(optimism):+.4f} ± {spread(optimism):.4f}; test ROUGE-L {statistics.mean(tests):.4f} "
            f"± {spread(tests):.4f} over {len(rows)} seeds"
        )


if __name__ == "__main__":
    main()
