"""The GPU path, checked for real in one command (under 8 minutes on one GPU); a clear skip without one.

1. A bart-base-sized model (d_model 768, 6+6 layers, 12 heads, vocabulary 50,265) built from its
   config with a tokenizer trained on the data: no download.
2. bf16 throughput of the trainer against a hand-written loop (benchmarks/throughput.py's).
3. A 4-trial search with 0.5 GPU per trial: two trials share the GPU at once (their report spans
   overlap), each worker runs two trials (reuse_actors), and every report's GPU memory is kept to
   show what a reused worker holds when its next trial starts.
4. With 2 GPUs or more: one data-parallel trial of 2 workers with a GPU each (NCCL), its examples per
   second and what each rank reported; with one GPU, the record says why it was not run.

Writes a JSON record (``--out``) and prints its last line with the figures. Without CUDA it prints
"no GPU: skipped" and records that, unless ``--rehearse`` runs the same steps on the CPU with a tiny
model (to check the script itself on a machine without a GPU).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

BART_BASE = dict(d_model=768, layers=6, heads=12, ffn=3072, vocab_size=50265, max_positions=1024)


def build_bart_base_sized(out_dir: Path, data_dir: Path) -> Path:
    """bart-base's shape, randomly initialised; the tokenizer's ids fill the first rows of its vocabulary."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from tune_dialsum.models import _tokenizer_texts, tiny_config, train_tokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = train_tokenizer("bart", _tokenizer_texts(str(data_dir)), vocab_size=8000)
    config = tiny_config("bart", tokenizer, dimensions=BART_BASE)
    config.vocab_size = BART_BASE["vocab_size"]  # bart-base's embedding and output layer, whatever the tokenizer uses
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config)
    model.generation_config.max_length = 64
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _space(name: str, model_dir: Path, data_dir: Path, storage: Path, budget: int, trials: dict, resources: dict):
    """The check's space: a bart-base-sized model, its learning rate searched, every trial to ``budget`` examples."""
    from tune_dialsum.space import parse_space

    return parse_space(
        {
            "name": f"{name}-{int(time.time())}",
            "data": {"path": str(data_dir), "max_eval_samples": 48},
            "fixed": {"model": str(model_dir), "max_input_length": 256, "max_target_length": 64, "batch_size": 16},
            "search": {"learning_rate": {"loguniform": [5e-5, 5e-4]}},
            "scheduler": {"type": "fifo", "budget_unit": "samples", "max_budget": budget},
            "trials": trials,
            "resources": resources,
            "selection": {"top_k": 1},
            "storage_path": str(storage),
        },
        source="<gpu_check>",
    )


def shared_gpu_search(model_dir: Path, data_dir: Path, storage: Path, gpus_per_trial: float, budget: int) -> dict:
    """Four trials, two per GPU at once; what each report recorded of device memory and overlap."""
    from tune_dialsum.analysis import read_reports
    from tune_dialsum.search import run_search

    trials = {"num_samples": 4, "max_concurrent": 2}
    resources = {"cpus_per_trial": 1, "gpus_per_trial": gpus_per_trial}
    space = _space("gpu-check", model_dir, data_dir, storage, budget, trials, resources)
    start = time.perf_counter()
    outcome = run_search(space)
    wall = time.perf_counter() - start
    trials = {d.name: read_reports(d) for d in sorted(Path(outcome.location).glob("trial_*"))}
    trials = {name: rows for name, rows in trials.items() if rows}  # a trial that failed before reporting
    spans = [(rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows[-1]["timestamp"]) for rows in trials.values()]
    at_once = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    by_start = sorted(trials.items(), key=lambda item: item[1][0]["timestamp"])
    return {
        "wall_s": round(wall, 1),
        "trials_at_once": at_once,
        "trials": [
            {
                "trial": name,
                "worker_pid": rows[0].get("pid"),
                "devices": rows[0].get("devices"),
                "cuda_allocated_mb": [r.get("cuda_allocated_mb") for r in rows],
                "rss_at_start_mb": rows[0].get("rss_at_start_mb"),
                "samples_per_s": round(rows[-1]["samples"] / sum(r["time_this_iter_s"] for r in rows), 1),
                "best_rougeL": rows[-1].get("best_rougeL"),
            }
            for name, rows in by_start
        ],
    }


def data_parallel_trial(model_dir: Path, data_dir: Path, storage: Path, gpus_per_worker: float, budget: int) -> dict:
    """One trial of 2 workers (``resources.workers_per_trial: 2``): throughput and what each rank reported."""
    from tune_dialsum.analysis import read_reports
    from tune_dialsum.search import run_search

    resources = {"workers_per_trial": 2, "cpus_per_worker": 1, "gpus_per_worker": gpus_per_worker}
    space = _space("gpu-check-dp", model_dir, data_dir, storage, budget, {"num_samples": 1}, resources)
    outcome = run_search(space)
    (rows,) = [read_reports(d) for d in Path(outcome.location).glob("trial_*")]
    first, last = rows[0], rows[-1]
    return {
        "world_size": last["world_size"],
        "workers": last.get("workers"),
        "devices_rank0": last.get("devices"),
        "samples_per_s": round(
            (last["samples"] - first["samples"]) / max(1e-9, last["time_total_s"] - first["time_total_s"]), 1
        ),
        "best_rougeL": last.get("best_rougeL"),
    }


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.set_defaults(family="bart")
    p.add_argument("--steps", type=int, default=200, help="training steps per throughput run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--budget", type=int, default=6400, help="training examples per search trial")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    p.add_argument("--rehearse", action="store_true", help="no GPU: run every step on the CPU with a tiny model")
    args = p.parse_args()
    import torch

    record: dict = {"machine": _common.machine(), "versions": _common.versions()}
    if not torch.cuda.is_available() and not args.rehearse:
        record["skipped"] = "no GPU"
        args.out.write_text(json.dumps(record, indent=2))
        print("gpu_check: no GPU: skipped (torch.cuda.is_available() is False); wrote", args.out)
        return
    data_dir, tiny_dir = _common.dialogsum_subset(args)
    if args.rehearse:
        model_dir, args.steps, args.batch_size, args.budget = tiny_dir, 20, 8, 320
        record["rehearsal"] = "CPU, tiny model: checks the script, measures nothing about GPUs"
    else:
        model_dir = build_bart_base_sized(data_dir.parent / "bart-base-sized", data_dir)
        record["gpu"] = torch.cuda.get_device_name(0)
        record["bf16"] = torch.cuda.is_bf16_supported()
    from throughput import measure

    started = time.perf_counter()
    trainer_sps, loop_sps = measure(model_dir, data_dir, args.steps, args.batch_size)
    record["throughput"] = {
        "trainer_samples_per_s": round(trainer_sps, 1),
        "hand_loop_samples_per_s": round(loop_sps, 1),
        "ratio": round(trainer_sps / loop_sps, 3),
        "batch_size": args.batch_size,
        "steps": args.steps,
    }
    args.out.write_text(json.dumps(record, indent=2))  # kept should the search fail
    gpus = 0 if args.rehearse else 0.5
    record["search"] = shared_gpu_search(model_dir, data_dir, data_dir.parent / "ray_results", gpus, args.budget)
    args.out.write_text(json.dumps(record, indent=2))
    if args.rehearse or torch.cuda.device_count() >= 2:
        per_worker = 0 if args.rehearse else 1
        storage = data_dir.parent / "ray_results"
        record["data_parallel"] = data_parallel_trial(model_dir, data_dir, storage, per_worker, args.budget)
    else:
        record["data_parallel"] = f"not run: {torch.cuda.device_count()} GPU (a 2-worker trial needs 2)"
    record["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(record, indent=2))
    memory = [t["cuda_allocated_mb"][0] for t in record["search"]["trials"]]
    print(json.dumps(record["search"]["trials"], indent=1))
    print(
        f"gpu_check: throughput {record['throughput']['ratio']:.2f} of the hand loop "
        f"({trainer_sps:.0f} vs {loop_sps:.0f} samples/s), {record['search']['trials_at_once']} trials at once, "
        f"GPU memory at each trial's first report {memory} MiB; data-parallel: {record['data_parallel']}; "
        f"wrote {args.out}"
    )


if __name__ == "__main__":
    main()
