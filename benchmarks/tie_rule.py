"""Which signal breaks a tie between re-scored checkpoints: the validation score or the validation loss?

``selection.ranked`` needs a rule where two candidates are within noise of each other (their paired 95%
interval on all of validation holds 0). This reads the searches in ``--experiments`` (directories a
search wrote, e.g. ``benchmarks/vs_transformers.py``'s), scores every checkpoint that can be a candidate
(those of at least ``--min-samples`` training examples) greedily on all of validation and all of test, and, over every pair of
checkpoints of one search's seed that are within noise of each other on validation, counts how often
the one with the better validation score, and how often the one with the lower validation loss (the
loss the trial reported, teacher-forced on the subset), has the better test score. Pairs of checkpoints
of one trial and of two trials are counted apart. A model met in several searches (the same seed, settings
and step: searches of one seed replay each other's trials) is scored once and paired once.

The last line prints, for pairs of two trials, the share in which each signal picked the better test score.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def candidate_checkpoints(experiment_dir: Path, min_samples: int):
    """(settings, record) of every checkpoint of one search that trained at least ``min_samples`` examples."""
    from tune_dialsum.checkpoints import find_checkpoints

    for record in find_checkpoints(experiment_dir):
        if record.budget("samples") >= min_samples and record.scores.get("loss") is not None:
            config = dict(record.snapshot.get("config", {}))
            config["model"] = Path(str(config.get("model", ""))).name  # the same model wherever the bed was built
            # (a setting a later version added, such as batch_order, makes an earlier search's trial another model)
            yield tuple(sorted((k, v) for k, v in config.items() if isinstance(v, (int, float, str)))), record


def score_all(experiments: list[Path], min_samples: int) -> dict:
    """Every candidate checkpoint's validation scores (per example), test score and reported loss, once each."""
    import yaml

    from tune_dialsum.experiment_context import experiment_context
    from tune_dialsum.generation import trial_decoding
    from tune_dialsum.scoring import score_model
    from tune_dialsum.space import parse_space

    models = {}
    for experiment_dir in experiments:
        raw = yaml.safe_load((experiment_dir / "space.yaml").read_text())
        context = experiment_context(parse_space(raw, source=str(experiment_dir / "space.yaml")))
        for settings, record in candidate_checkpoints(experiment_dir, min_samples):
            identity = (raw.get("seed"), settings, record.step)
            if identity in models:
                continue
            decoding = trial_decoding(record.snapshot.get("config", {}))
            validation = score_model(str(record.path), context, "validation", decoding, per_example=True)
            test = score_model(str(record.path), context, "test", decoding)
            models[identity] = {
                "trial": f"{experiment_dir.name}/{record.trial_id}",
                "settings": dict(identity[1]),
                "step": record.step,
                "loss": record.scores.get("loss"),
                "validation": validation["rougeL"],
                "per_example": validation["per_example"]["rougeL"],
                "test": test["rougeL"],
            }
            print(
                f"{models[identity]['trial']} step {record.step}: validation {validation['rougeL']:.4f}, "
                f"test {test['rougeL']:.4f}, loss {record.scores.get('loss'):.3f}",
                flush=True,
            )
    return models


def tie_pairs(models: dict) -> dict[str, list[dict]]:
    """Pairs within noise on validation, of one seed: ``one trial`` (same settings) and ``two trials``."""
    from tune_dialsum.metrics import paired_difference

    pairs = {"one trial": [], "two trials": []}
    for (a_id, a), (b_id, b) in itertools.combinations(models.items(), 2):
        if a_id[0] != b_id[0] or not paired_difference(a["per_example"], b["per_example"]).within_noise:
            continue
        by_score = (a, b) if a["validation"] >= b["validation"] else (b, a)
        by_loss = (a, b) if a["loss"] <= b["loss"] else (b, a)
        kind = "one trial" if a_id[1] == b_id[1] else "two trials"
        pairs[kind].append(
            {
                "seed": a_id[0],
                "score_gain": by_score[0]["test"] - by_score[1]["test"],
                "loss_gain": by_loss[0]["test"] - by_loss[1]["test"],
                "agree": by_score[0] is by_loss[0],
            }
        )
    return pairs


def picked_better(rows: list[dict]) -> tuple[int, int]:
    """In how many pairs (the better validation score, the lower loss) had the better test score."""
    return sum(r["score_gain"] > 0 for r in rows), sum(r["loss_gain"] > 0 for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--experiments", type=Path, nargs="+", required=True, help="search directories (space.yaml, trial_*)"
    )
    p.add_argument(
        "--min-samples", type=int, default=4800, help="training examples of a checkpoint that can be a candidate"
    )
    p.add_argument("--json", type=Path, default=None, help="write the scored models and the pairs here")
    args = p.parse_args()
    models = score_all(args.experiments, args.min_samples)
    pairs = tie_pairs(models)
    for kind, rows in pairs.items():
        if not rows:
            print(f"{kind}: no pair within noise")
            continue
        by_score, by_loss = picked_better(rows)
        print(
            f"{kind}: {len(rows)} pairs within noise on validation; the better validation score had the better test "
            f"score in {by_score} (mean test gain {statistics.mean(r['score_gain'] for r in rows):+.4f}), "
            f"the lower loss in {by_loss} ({statistics.mean(r['loss_gain'] for r in rows):+.4f}); "
            f"the two signals agree in {sum(r['agree'] for r in rows)}"
        )
    if args.json:
        saved = {"recorded": _common.recorded_with(argparse.Namespace(bed="searches")), "pairs": pairs}
        saved["models"] = [{k: v for k, v in m.items() if k != "per_example"} for m in models.values()]
        args.json.write_text(json.dumps(saved, indent=1))
    two = pairs["two trials"]
    for seed in sorted({r["seed"] for r in two}):
        rows = [r for r in two if r["seed"] == seed]
        by_score, by_loss = picked_better(rows)
        print(
            f"seed {seed}: {len(rows)} pairs of two trials; the better validation score picked the better test score "
            f"in {by_score}, the lower loss in {by_loss}"
        )
    if two:
        by_score, by_loss = picked_better(two)
        print(
            f"two trials: better validation score {by_score / len(two):.2f}, "
            f"lower loss {by_loss / len(two):.2f} of pairs picked the better test score"
        )


if __name__ == "__main__":
    main()
