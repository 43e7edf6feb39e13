"""``python -m tune_dialsum``: a thin dispatcher over the package's commands.

Each command is a handler that returns an exit code, registered by ``@_command``
together with its help and the function that declares its arguments, which sits
right above it; :func:`build_parser` makes one subcommand per registered command.
Errors that are the user's to fix (:class:`TuneDialsumError`) print as one line
on stderr with no traceback; everything else is a bug and keeps its traceback.

Longer than the package's other modules (about 500 lines) because it holds every command's flags:
ten commands, each a few lines of arguments beside its handler. Split by command, each piece would
be a list of ``add_argument`` calls with nothing of its own; the handlers stay a few lines each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tune_dialsum.errors import TuneDialsumError, UsageError


@dataclass(frozen=True)
class _Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


_COMMANDS: list[_Command] = []  # filled by @_command in file order, the order ``--help`` lists them in


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _command(name: str, help: str, add_arguments=_no_arguments):
    """Register the decorated handler as the command ``name``."""

    def register(run):
        _COMMANDS.append(_Command(name, help, add_arguments, run))
        return run

    return register


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 but got {value}")
    return value


# The train command's defaults that the training guide documents, where the search's differ.
GUIDE_DEFAULTS = {"warmup_steps": 500, "weight_decay": 0.01, "generation_num_beams": 4}
# The shorter names the guide's command line used, still accepted.
FLAG_ALIASES = {
    "num_train_epochs": "--epochs",
    "generation_num_beams": "--num-beams",
    "validation_split": "--val-split",
}


def _add_field_flag(parser: argparse.ArgumentParser, field, default, value_type=None, required: bool = False):
    """``--name-with-dashes`` for a schema field, with its help; ``value_type`` (default: the field's type)
    parses and checks a value."""
    from tune_dialsum.space_schema import REQUIRED

    flags = ["--" + field.name.replace("_", "-")] + ([FLAG_ALIASES[field.name]] if field.name in FLAG_ALIASES else [])
    help = field.metadata["help"].removesuffix(" " + REQUIRED)
    if field.metadata["kind"] is bool:
        parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=default, help=help)
        return
    presence = {"required": True} if required else {"default": default}
    parser.add_argument(*flags, type=value_type or field.metadata["kind"], help=help, **presence)


def _setting(name: str):
    """An argparse type that accepts what a space accepts for the setting ``name``, refusing with its words."""
    from tune_dialsum.errors import SpaceError
    from tune_dialsum.space_checks import Checker

    def parse(text: str):
        try:
            return Checker("flag").setting(name, name, text)
        except SpaceError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix(f"flag: {name}: ")) from None

    parse.__name__ = name  # argparse names the type in its own messages
    return parse


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65534:  # the decoding study takes the next port
        raise argparse.ArgumentTypeError(f"must be 0 (free ports) or 1-65534 but got {value}")
    return value


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None, help="Ray cluster to use (auto or HOST:PORT); default: local")


def _add_experiment_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment_dir", help="<storage-path>/<name>: a directory or a URI (s3://...)")


def _add_inference_batch_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=_positive_int, default=16)


def _write_lines(path: str | None, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if path:
        Path(path).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def _tiny_model_arguments(parser: argparse.ArgumentParser) -> None:
    from tune_dialsum.models import FAMILIES

    parser.add_argument("--family", choices=sorted(FAMILIES), required=True)
    parser.add_argument("--out", required=True, help="directory to write the model to")
    parser.add_argument("--data", default=None, help="data directory whose train split trains the tokenizer")
    parser.add_argument("--seed", type=int, default=0)


@_command("tiny-model", "build a tiny randomly initialised model for offline use", _tiny_model_arguments)
def _cmd_tiny_model(args) -> int:
    from tune_dialsum.models import build_tiny_model

    out = build_tiny_model(args.family, args.out, data_dir=args.data, seed=args.seed)
    print(f"tiny {args.family} model written to {out}")
    return 0


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    """A flag for every trial setting (named as the space's keys, checked as they are) and the run's own flags.

    The defaults are the guide's where it documents one (``GUIDE_DEFAULTS``), else the search's.
    """
    from tune_dialsum.space_schema import DataSection, TrialSettings

    for field in dataclasses.fields(TrialSettings):
        default = GUIDE_DEFAULTS.get(field.name, field.default)
        _add_field_flag(parser, field, default, value_type=_setting(field.name), required=field.name == "model")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--data", default="data", help="directory with train/validation/test files")
    data = {field.name: field for field in dataclasses.fields(DataSection)}
    _add_field_flag(parser, data["validation_split"], data["validation_split"].default)
    for name in ("max_train_samples", "max_eval_samples"):  # a count: at least 1, as in a space
        _add_field_flag(parser, data[name], data[name].default, value_type=_positive_int)
    parser.add_argument(
        "--max-steps", type=int, default=-1, help="stop after this many steps (overrides --num-train-epochs)"
    )
    parser.add_argument("--eval-steps", type=_positive_int, default=500)
    parser.add_argument("--logging-steps", type=_positive_int, default=100)
    parser.add_argument("--seed", type=int, default=42)


@_command("train", "fine-tune one model (the training guide's command line)", _train_arguments)
def _cmd_train(args) -> int:
    from tune_dialsum.space_schema import TrialSettings
    from tune_dialsum.train import train_on_directory

    settings = TrialSettings.from_config(vars(args))
    data = {key: getattr(args, key) for key in ("validation_split", "max_train_samples", "max_eval_samples")}
    run = {"max_steps": args.max_steps, "eval_steps": args.eval_steps, "save_steps": args.eval_steps}
    run |= {"logging_steps": args.logging_steps}
    scores = train_on_directory(args.data, args.output_dir, settings, seed=args.seed, **data, **run)
    print(json.dumps({k: round(v, 4) for k, v in scores.items() if k.startswith("eval_")}, indent=2))
    print(f"final model: {Path(args.output_dir) / 'final_model'}")
    return 0


def _add_resource_arguments(parser: argparse.ArgumentParser) -> None:
    """A flag for each key of the space's ``resources`` section; unset, the space's value stands."""
    from tune_dialsum.space_schema import ResourcesSection

    for field in dataclasses.fields(ResourcesSection):
        _add_field_flag(parser, field, default=None)


def _add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that set the space's ``tracking`` section."""
    parser.add_argument(
        "--track",
        choices=("mlflow", "none"),
        default=None,
        help="log every trial to an experiment tracker: mlflow (one run per trial under one per search)",
    )
    parser.add_argument(
        "--track-uri",
        default=None,
        help="tracking server or store (default: MLFLOW_TRACKING_URI, else <experiment>/mlruns)",
    )


def _search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", default=None, help="YAML search space, e.g. search_spaces/tiny.yaml")
    parser.add_argument("--name", default=None, help="experiment name (default: the space's)")
    parser.add_argument(
        "--num-samples", type=_positive_int, default=None, help="number of trials (with --resume: raise it to add more)"
    )
    parser.add_argument("--max-concurrent", type=_positive_int, default=None, help="trials running at once")
    _add_resource_arguments(parser)
    _add_address(parser)
    parser.add_argument(
        "--storage-path",
        default=None,
        help="where experiments are kept: a directory every node shares, or a URI such as s3://bucket/path "
        "(default: ray_results)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the experiment --name (in --storage-path) with its own space"
    )
    _add_tracking_arguments(parser)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a space setting, e.g. --set scheduler.max_budget=300 (repeatable)",
    )


@_command("search", "run a hyperparameter search described by a space file", _search_arguments)
def _cmd_search(args) -> int:
    from tune_dialsum.cluster import keep_on_loopback

    keep_on_loopback(args.address)  # before anything can import ray
    from tune_dialsum.locations import split
    from tune_dialsum.search import format_summary, resume_search, run_search
    from tune_dialsum.space import load_space

    if args.resume:
        name, storage_path = _experiment_to_resume(args)
        outcome = resume_search(name, storage_path, address=args.address, num_samples=args.num_samples)
    else:
        if not args.space:
            raise UsageError("search: --space is required (or --resume --name NAME to continue an experiment)")
        overrides = list(args.set)
        for flag, key in _FLAG_SETTINGS:
            value = getattr(args, flag)
            if value is not None:
                overrides.append(f"{key}={value}")
        space = load_space(args.space, overrides)
        name = space.name
        outcome = run_search(space, address=args.address)
    print(format_summary(outcome))
    if outcome.unfinished:
        resume = ["python", "-m", "tune_dialsum", "search", "--resume", "--name", name]
        resume += ["--storage-path", split(outcome.location)[0]]
        resume += ["--address", args.address] if args.address else []
        print(
            f"{outcome.unfinished} trials did not finish (interrupted or out of time); "
            f"continue with: {shlex.join(resume)}",
            file=sys.stderr,
        )
        return 130
    if outcome.stage_failures:
        failed = ", ".join(outcome.stage_failures)
        print(f"the search exported its best model, but the {failed} failed (see above)", file=sys.stderr)
        return 3
    return 0


# search flags that set a key of the space
_FLAG_SETTINGS = (
    ("num_samples", "trials.num_samples"),
    ("max_concurrent", "trials.max_concurrent"),
    ("gpus_per_trial", "resources.gpus_per_trial"),
    ("cpus_per_trial", "resources.cpus_per_trial"),
    ("workers_per_trial", "resources.workers_per_trial"),
    ("gpus_per_worker", "resources.gpus_per_worker"),
    ("cpus_per_worker", "resources.cpus_per_worker"),
    ("storage_path", "storage_path"),
    ("name", "name"),
    ("track", "tracking.backend"),
    ("track_uri", "tracking.uri"),
)


def _experiment_to_resume(args) -> tuple[str, str]:
    """(name, storage path) of the experiment ``--resume`` continues (search.experiment_to_resume refuses the rest)."""
    from tune_dialsum.search import RESUME_KEEPS, experiment_to_resume

    changed = [f"--set {args.set[0]}"] if args.set else []
    changed += [f"--{flag.replace('_', '-')}" for flag in RESUME_KEEPS if getattr(args, flag) is not None]
    return experiment_to_resume(args.name, args.storage_path, args.space, changed)


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    _add_experiment_dir(parser)
    parser.add_argument("--out", required=True, help="directory (or URI) to write the model to")
    parser.add_argument("--metric", default=None, help="score to choose by (default: the experiment's objective)")
    parser.add_argument("--trial", default=None, help="export this trial's best checkpoint instead")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--adapter-only",
        action="store_true",
        help="a LoRA trial's adapter alone, its base model named (default: merged into a plain model)",
    )


@_command("export", "export the best checkpoint of an experiment as a model directory", _export_arguments)
def _cmd_export(args) -> int:
    from tune_dialsum.contract import score_key
    from tune_dialsum.export import export_experiment

    record, out, metric = export_experiment(
        args.experiment_dir, args.out, args.metric, args.trial, args.force, adapter_only=args.adapter_only
    )
    print(
        f"exported trial {record.trial_id} at step {record.step} "
        f"({metric}={record.scores.get(score_key(metric), float('nan')):.4f}) to {out}"
    )
    return 0


def _add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """Decoding settings that override the model's; read back by :func:`_decoding_overrides`."""
    parser.add_argument("--num-beams", type=_positive_int, default=None, help="default: the model's (tuned) setting")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=None, help="default: the model's setting")
    parser.add_argument("--length-penalty", type=float, default=None, help="default: the model's setting")


def _decoding_overrides(args) -> dict:
    # the model's generation config (a tuned decoding, for an export) unless a flag says otherwise
    flags = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens, "length_penalty": args.length_penalty}
    return {key: value for key, value in flags.items() if value is not None}


def _summarize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (best_model or final_model)")
    parser.add_argument("--input", default=None, help="text (blank-line separated), .jsonl or .csv; default stdin")
    parser.add_argument("--output", default=None, help="default: stdout")
    _add_inference_batch_size(parser)
    _add_decoding_arguments(parser)


@_command("summarize", "summarise dialogues with a trained or exported model", _summarize_arguments)
def _cmd_summarize(args) -> int:
    from tune_dialsum.inference import DialogueSummarizer, read_dialogues, summary_lines

    source = Path(args.input) if args.input else None
    if source is not None and not source.is_file():
        raise UsageError(f"--input {source}: no such file")
    summarizer = DialogueSummarizer(args.model, batch_size=args.batch_size)  # a bad model fails before stdin is read
    records = read_dialogues(source, text=None if source else sys.stdin.read())
    summaries = summarizer.summarize([r["dialogue"] for r in records], **_decoding_overrides(args))
    # a file of records (.jsonl, .csv, ...) gets records back, keyed by id; so does asking for a .jsonl output
    jsonl = (source is not None and not source.name.endswith(".txt")) or (args.output or "").endswith(".jsonl")
    _write_lines(args.output, summary_lines(records, summaries, jsonl))
    return 0


def _tune_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model directory (an export, a checkpoint), hub name or tiny:FAMILY")
    parser.add_argument("--data", required=True, help="data directory; its validation split scores each decoding")
    parser.add_argument("--space", default=None, help="space file whose data and decoding sections to use")
    parser.add_argument(
        "--out", default=None, help="where the model with the chosen decoding goes (default: MODEL-decoding)"
    )
    _add_address(parser)


@_command(
    "tune-decoding",
    "search how a trained model decodes (beams, length, repetition) without retraining",
    _tune_decoding_arguments,
)
def _cmd_tune_decoding(args) -> int:
    from tune_dialsum.cluster import keep_on_loopback

    keep_on_loopback(args.address)  # before anything can import ray
    from tune_dialsum.decoding import format_result
    from tune_dialsum.experiment_context import experiment_context
    from tune_dialsum.space import decoding_space
    from tune_dialsum.tune_decoding import tune_model

    if not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: no such directory; pass the directory with the validation split")
    space = decoding_space(args.space, args.data, args.model)
    out = Path(args.out) if args.out else _default_decoding_out(args.model)
    result = tune_model(args.model, out, space, experiment_context(space), address=args.address)
    print(format_result(result))
    print(f"Model with the chosen decoding: {out}")
    return 0


def _default_decoding_out(model: str) -> Path:
    """Beside a model directory, ``NAME-decoding``; for a hub or tiny model, in the working directory."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve().parent / f"{path.resolve().name}-decoding"
    return Path(f"{model.rstrip('/').split('/')[-1].replace(':', '-')}-decoding")


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="data directory")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument(
        "--predictions", default=None, help="where to write predictions (default: predictions-SPLIT.jsonl)"
    )
    parser.add_argument("--max-samples", type=_positive_int, default=None)
    _add_inference_batch_size(parser)


@_command("evaluate", "score a model on a data split with ROUGE", _evaluate_arguments)
def _cmd_evaluate(args) -> int:
    from tune_dialsum.inference import evaluate_split

    evaluation = evaluate_split(args.model, args.data, args.split, args.max_samples, args.batch_size)
    output = Path(args.predictions or f"predictions-{args.split}.jsonl")
    _write_lines(str(output), evaluation.lines())
    print(f"{args.split}: {len(evaluation.ids)} dialogues")
    for key, value in evaluation.scores.items():
        print(f"{key:10s} {value:.4f}")
    print(f"predictions: {output}")
    return 0


def _dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment_dir", help="<storage-path>/<name>, running or finished")
    parser.add_argument(
        "--port", type=_port, default=8080, help="the training study's port; the decoding study's is the next (0: free)"
    )


@_command(
    "dashboard",
    "optuna-dashboard on an experiment's studies (training and decoding), live and read-only, on 127.0.0.1",
    _dashboard_arguments,
)
def _cmd_dashboard(args) -> int:
    import time

    from tune_dialsum.dashboard import start_dashboards

    dashboards = start_dashboards(args.experiment_dir, args.port)
    for dashboard in dashboards:
        waiting = "" if dashboard.database.is_file() else " (not there yet: served once it is)"
        print(f"{dashboard.label} study: {dashboard.url}{waiting}", flush=True)
    print("serving on 127.0.0.1 only; Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        for dashboard in dashboards:
            dashboard.close()


def _analyze_arguments(parser: argparse.ArgumentParser) -> None:
    _add_experiment_dir(parser)
    parser.add_argument("--top", type=_positive_int, default=None, help="show only the best N trials")


@_command("analyze", "leaderboard and report (plots, HTML) of an experiment", _analyze_arguments)
def _cmd_analyze(args) -> int:
    from tune_dialsum.analysis import Experiment
    from tune_dialsum.report import publish_report

    experiment = Experiment.load(args.experiment_dir)
    board = experiment.leaderboard(args.top)
    print(board.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for warning in experiment.boundary_warnings():
        print(f"warning: {warning}")
    report = publish_report(experiment)
    print(f"report: {report.page}" + (f" (stored at {report.stored})" if report.stored != str(report.page) else ""))
    if report.tracked:
        print(f"report logged to {report.tracked}")
    if report.not_tracked:
        print(f"warning: report not logged to {report.not_tracked}", file=sys.stderr)
    return 0


@_command("space-keys", "print every key a space file takes, with its default and help")
def _cmd_space_keys(args) -> int:
    from tune_dialsum.space_schema import format_space_keys

    print(format_space_keys())
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other error of the tool."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tune_dialsum", description="Hyperparameter search for dialogue summarization.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        subparser = subparsers.add_parser(command.name, help=command.help)
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        # Read by huggingface_hub when transformers is first imported, here and in Ray's trial
        # workers: no "Loading weights" bars, and no transformers import for commands that need none.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return args.run(args)
    except TuneDialsumError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "build_parser", "UsageError"]
