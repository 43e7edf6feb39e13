"""Full fine-tuning against LoRA at the same budget: memory, checkpoint size, examples/s and best ROUGE-L.

Each run trains the bench model (``--family``, ``--d-model``, ``--layers``; the bed's data) through the
trainer a trial uses (``DialogueSummarizationTrainer.for_settings``: LoRA is ``adapter: lora``), to
``--budget`` training examples, evaluating every ``--interval`` on the first ``--eval-size`` validation
rows (greedy). Each run is a fresh process, so that its peak memory is its own. Measured per run:

- peak memory: the process's peak resident set (CPU), and on a GPU ``torch.cuda.max_memory_allocated``;
  beside them the training state the optimizer needs: weights + gradients + AdamW's two moments of the
  weights that train (bytes, float32), which is where LoRA saves;
- checkpoint size: the last checkpoint with its optimizer state (what a trial keeps to resume), and its
  weights alone;
- examples/s: training examples over the seconds spent in training steps (evaluations left out);
- best ROUGE-L over the evaluations, and the trained / total weights.

The variants: ``full`` (every weight), ``lora`` (rank ``--lora-r`` on the family's query and value
projections) and ``lora-all`` (every linear layer). Each has its own learning rate (``--lr-full``,
``--lr-lora``: LoRA wants higher rates). The last lines print each variant's median over seeds, and
LoRA's over full fine-tuning's.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

VARIANTS = {
    "full": {},
    "lora": {"adapter": "lora"},
    "lora-all": {"adapter": "lora", "lora_target_modules": "all-linear"},
}


def _dir_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())


def _step_clock():
    """A callback that adds up the seconds spent inside training steps."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        seconds = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self.started

    return StepClock()


def one_run(job: dict) -> dict:
    """One training run (in its own process): the measurements of the module docstring."""
    import resource

    import torch

    from tune_dialsum import DialogueDataLoader
    from tune_dialsum.adapters import parameter_counts
    from tune_dialsum.space_schema import TrialSettings
    from tune_dialsum.train import DialogueSummarizationTrainer

    settings = TrialSettings(**job["settings"])
    out = Path(job["out"])
    trainer = DialogueSummarizationTrainer.for_settings(settings, str(out), tensorboard=False, data_dir=job["data"])
    splits = DialogueDataLoader(job["data"]).load_splits()
    datasets = trainer.load_and_prepare_data(splits["train"], val_df=splits["validation"].head(job["eval_size"]))
    per_step = settings.batch_size
    interval = max(1, job["interval"] // per_step)
    arguments = trainer.training_arguments(
        settings,
        max_steps=math.ceil(job["budget"] / per_step),
        eval_steps=interval,
        save_steps=interval,
        logging_steps=interval,
        save_total_limit=1,
        seed=job["seed"],
    )
    clock = _step_clock()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trained = trainer.train(datasets, training_args=arguments, callbacks=[clock], save_final_model=False)
    evaluations = [e for e in trained.state.log_history if "eval_rougeL" in e]
    best = max(evaluations, key=lambda e: e["eval_rougeL"])
    checkpoint = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    weights = [f for f in checkpoint.iterdir() if f.name.endswith(".safetensors")]
    counts = parameter_counts(trainer.model)
    examples = trained.state.global_step * per_step
    return {
        **counts,
        "best_rougeL": best["eval_rougeL"],
        "degenerate_at_best": bool(best.get("eval_degenerate")),
        "best_at_examples": best["step"] * per_step,
        "examples_per_s": examples / clock.seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        # float32: the weights, and for those that train a gradient and AdamW's two moments
        "training_state_mb": (counts["total_parameters"] + 3 * counts["trainable_parameters"]) * 4 / 2**20,
        "checkpoint_mb": _dir_bytes(checkpoint) / 2**20,
        "checkpoint_weights_mb": sum(f.stat().st_size for f in weights) / 2**20,
    }


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _range(runs: list[dict], key: str, digits: int) -> str:
    values = sorted(r[key] for r in runs)
    return f"{statistics.median(values):.{digits}f} ({values[0]:.{digits}f}..{values[-1]:.{digits}f})"


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=None, help="training examples per run (bundled 6400, DialogSum 4000)")
    p.add_argument("--interval", type=int, default=None, help="examples between evaluations (default budget / 4)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr-full", type=float, default=2e-3)
    p.add_argument("--lr-lora", type=float, default=1e-2)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--dialogue-format", default="standard", choices=["standard", "turns", "compact"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="write every run here (after each run)")
    args = p.parse_args()
    args.max_budget = 0  # the bed's own defaults for the rest
    data_dir, model_dir = _common.bed(args)
    budget = args.budget or (6400 if args.bed == "bundled" else 4000)
    base = {
        **_common.one_model_settings(args, model_dir),
        "generation_num_beams": 1,
        "lora_r": args.lora_r,
        "lora_alpha": 2.0 * args.lora_r,
    }
    runs, meta = [], _common.recorded_with(args, budget=budget, eval_size=args.eval_size)
    scratch = Path(tempfile.mkdtemp(prefix="tune_dialsum_lora_"))
    spawn = multiprocessing.get_context("spawn")
    for seed in range(args.seeds):
        for variant in args.variants:
            lr = args.lr_full if variant == "full" else args.lr_lora
            job = {
                "settings": {**base, **VARIANTS[variant], "learning_rate": lr},
                "out": str(scratch / f"{variant}-{seed}"),
                "data": str(data_dir),
                "eval_size": args.eval_size,
                "budget": budget,
                "interval": args.interval or budget // 4,
                "seed": seed,
            }
            with spawn.Pool(1) as pool:
                run = {"variant": variant, "seed": seed, "learning_rate": lr, **pool.apply(one_run, (job,))}
            runs.append(run)
            print(json.dumps(run), flush=True)
            if args.json:
                args.json.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    for variant in args.variants:
        mine = [r for r in runs if r["variant"] == variant]
        print(
            f"{variant}: best ROUGE-L {_range(mine, 'best_rougeL', 4)}, {_range(mine, 'examples_per_s', 1)} examples/s, "
            f"peak RSS {_range(mine, 'peak_rss_mb', 0)} MB, training state {mine[0]['training_state_mb']:.2f} MB, "
            f"checkpoint {mine[0]['checkpoint_mb']:.2f} MB ({mine[0]['checkpoint_weights_mb']:.2f} MB weights), "
            f"{mine[0]['trainable_parameters']:,} of {mine[0]['total_parameters']:,} weights train "
            f"({len(mine)} seeds)"
        )
    full = [r for r in runs if r["variant"] == "full"]
    for variant in [v for v in args.variants if v != "full" and full]:
        mine = [r for r in runs if r["variant"] == variant]
        print(
            f"{variant} / full (medians): examples/s {_median(mine, 'examples_per_s') / _median(full, 'examples_per_s'):.2f}, "
            f"checkpoint {mine[0]['checkpoint_mb'] / full[0]['checkpoint_mb']:.3f}, training state "
            f"{mine[0]['training_state_mb'] / full[0]['training_state_mb']:.3f}, best ROUGE-L "
            f"{_median(mine, 'best_rougeL') - _median(full, 'best_rougeL'):+.4f}"
        )
    print(f"machine: {_common.machine()}")


if __name__ == "__main__":
    main()
