"""Training samples per second inside a trial against a minimal hand-written PyTorch loop.

The same model, the same batches (the trainer's own dataloader), the same optimiser settings and
device. Each side runs twice, alternating, and the faster run of each counts. Target: at least 0.9
of the hand loop. The last line prints the ratio.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def hand_loop(model_dir: Path, batches: list, lr: float, device: str) -> float:
    """Samples per second of a plain AdamW loop over ``batches``, in bf16 autocast where the trainer uses bf16."""
    import contextlib

    import torch
    from transformers import AutoModelForSeq2SeqLM, get_linear_schedule_with_warmup

    from tune_dialsum.train import precision_flags

    precision = precision_flags()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16 if precision["bf16"] else torch.float16)
        if device == "cuda"
        else contextlib.nullcontext()
    )
    scaler = torch.amp.GradScaler("cuda", enabled=precision["fp16"])
    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, len(batches))
    start = time.perf_counter()
    for batch in batches:
        with autocast:
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        optimizer.zero_grad()
    if device == "cuda":
        torch.cuda.synchronize()
    return sum(len(b["input_ids"]) for b in batches) / (time.perf_counter() - start)


def measure(model_dir: Path, data_dir: Path, steps: int, batch_size: int, rounds: int = 2) -> tuple[float, float]:
    """(trainer, hand loop) samples per second, the best of ``rounds`` alternating runs of each."""
    import torch

    from tune_dialsum import DialogueDataLoader, DialogueSummarizationTrainer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    splits = DialogueDataLoader(data_dir).load_splits()
    ours, loop = [], []
    for _ in range(rounds):
        trainer = DialogueSummarizationTrainer(
            str(model_dir), tempfile.mkdtemp(), max_input_length=256, max_target_length=64, tensorboard=False
        )
        datasets = trainer.load_and_prepare_data(splits["train"], val_df=splits["validation"].head(8))
        training_args = trainer.get_training_arguments(
            learning_rate=1e-3,
            batch_size=batch_size,
            max_steps=steps,
            warmup_steps=0,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=steps,
        )
        hf_trainer = trainer.build_trainer(datasets, training_args, callbacks=None)
        batches = []
        while len(batches) < steps:  # the same batches the trainer draws, epoch after epoch
            batches += list(hf_trainer.get_train_dataloader())
        batches = batches[:steps]
        start = time.perf_counter()
        hf_trainer.train()
        if device == "cuda":
            torch.cuda.synchronize()
        ours.append(steps * batch_size / (time.perf_counter() - start))
        del hf_trainer, trainer
        loop.append(hand_loop(model_dir, batches, 1e-3, device))
        print(f"trainer {ours[-1]:8.1f} samples/s   hand loop {loop[-1]:8.1f} samples/s", flush=True)
    return max(ours), max(loop)


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", default=None, help="model directory (default: a tiny model of --family)")
    args = p.parse_args()
    data_dir, model_dir = _common.dialogsum_subset(args)
    model_dir = Path(args.model) if args.model else model_dir
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours, loop = measure(model_dir, data_dir, args.steps, args.batch_size)
    print(f"machine: {_common.machine()}, device {device}, batch {args.batch_size}, {args.steps} steps")
    print(f"throughput: {ours / loop:.2f} of the hand-written loop (target >= 0.90)")


if __name__ == "__main__":
    main()
