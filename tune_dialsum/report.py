"""The analysis report: PNG plots and an HTML page beside an experiment.

``write_report(experiment)`` writes into ``<experiment>/report/`` only:
learning curves (stopped and finished trials told apart), the objective
against each searched setting, parallel coordinates, importance, and the
decoding trials against length and time with their Pareto fronts.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tune_dialsum.analysis import Experiment
from tune_dialsum.atomic import atomic_write_text
from tune_dialsum.choices import read_decoding, read_selection
from tune_dialsum.contract import CHOSEN_WITHIN_NOISE, REPORT_DIR, STOPPED
from tune_dialsum.errors import one_line


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_curves(experiment: Experiment, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    states = experiment.trials.set_index("trial_id")["state"]
    for trial_id, rows in experiment.curves.groupby("trial_id"):
        stopped = states.get(trial_id) == STOPPED
        ax.plot(
            rows[experiment.time_attr],
            rows[experiment.metric],
            marker="o",
            markersize=3,
            linestyle="--" if stopped else "-",
            alpha=0.5 if stopped else 0.9,
            color="grey" if stopped else None,
            label=None if stopped else trial_id,
        )
    ax.plot([], [], linestyle="--", color="grey", label="stopped by the scheduler")
    ax.set(
        xlabel={"step": "training steps", "epoch": "epochs", "samples": "training examples seen"}[experiment.time_attr],
        ylabel=experiment.metric,
        title=f"{experiment.space.name}: {experiment.metric} during training",
    )
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_settings(experiment: Experiment, path: Path) -> Path:
    plt = _pyplot()
    trials = experiment.trials
    names = [n for n in experiment.space.searched_settings if n in trials and trials[n].notna().any()]
    score = f"best_{experiment.metric}"
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        distribution = experiment.space.search.get(name)
        tried = trials[name].notna()  # a setting of one family only is missing in the others' trials
        values, scores = trials[name][tried], trials[score][tried]
        if (distribution is not None and distribution.kind == "choice") or not pd.api.types.is_numeric_dtype(values):
            # a choice is a set of categories, numbers included: one evenly spaced slot per option, tried or not
            options = [_label(o) for o in distribution.args] if distribution is not None else []
            categories = options + sorted({_label(v) for v in values} - set(options))
            ax.scatter([categories.index(_label(v)) for v in values], scores)
            ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 3 else 0)
            ax.set_xlim(-0.5, len(categories) - 0.5)
        else:
            ax.scatter(values, scores)
            if distribution is not None and distribution.kind.startswith("log"):
                _log_axis(ax, values)
        ax.set(xlabel=name, ylabel=score)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _label(value) -> str:
    """A choice as its axis label: 16 and 16.0 (a column with gaps is float) are one category."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _log_axis(ax, values: pd.Series) -> None:
    """A log x axis with a few plainly labelled ticks: matplotlib labels minor ticks on a range under a
    decade, and their labels ("3x10^-4") run into each other."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ax.set_xscale("log")
    low, high = float(values.min()), float(values.max())
    ticks = np.geomspace(low, high, 3) if high > low else np.array([low])
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks])
    if high > low:
        pad = (high / low) ** 0.08
        ax.set_xlim(low / pad, high * pad)


def plot_parallel_coordinates(experiment: Experiment, path: Path) -> Path:
    plt = _pyplot()
    trials = experiment.trials.dropna(subset=[f"best_{experiment.metric}"])
    names = [n for n in experiment.space.searched_settings if n in trials]
    score = f"best_{experiment.metric}"
    columns = {}
    for name in [*names, score]:
        values = trials[name]
        if not pd.api.types.is_numeric_dtype(values):
            values = values.astype(str).map({c: i for i, c in enumerate(sorted(values.astype(str).unique()))})
        values = values.astype(float)
        span = values.max() - values.min()
        columns[name] = (values - values.min()) / span if span else values * 0 + 0.5
    fig, ax = plt.subplots(figsize=(1.6 * len(columns) + 2, 4.5))
    colour = plt.get_cmap("viridis")
    for i in range(len(trials)):
        ax.plot(
            range(len(columns)), [columns[c].iloc[i] for c in columns], color=colour(columns[score].iloc[i]), alpha=0.8
        )
    ax.set_xticks(range(len(columns)), list(columns), rotation=20)
    ax.set(yticks=[], title="settings of each trial, coloured by its best score (yellow is best)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_importance(importance: pd.Series, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.5 * max(2, len(importance)) + 1))
    if importance.empty:
        ax.text(0.5, 0.5, "too few finished trials for importance", ha="center", va="center")
        ax.set_axis_off()
    else:
        importance.sort_values().plot.barh(ax=ax)
        used = importance.attrs.get("trials")
        ax.set(xlabel="importance (fANOVA)", title=f"which settings mattered (all {used} finished trials)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_decoding(experiment: Experiment, path: Path) -> Path | None:
    """The objective (ROUGE-L) against mean summary length and against seconds per summary, each front marked;
    None without a stage (or where every decoding failed)."""
    trials, document = experiment.decoding, read_decoding(experiment.path)
    if trials.empty or "seconds_per_summary" not in trials:
        return None
    trials = trials[trials["error"].isna()]
    objective, unit = document["objective"], document.get("length_unit", "words")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, cost, front, label in (
        (axes[0], f"mean_{unit}", "front_length", f"mean summary length ({unit})"),
        (axes[1], "seconds_per_summary", "front_time", "seconds per summary"),
    ):
        tried = trials[~trials["training_decoding"]]
        ax.scatter(tried[cost], tried[objective], color="tab:blue", alpha=0.6, label="decoding trial")
        edge = trials[trials[front]].sort_values(cost)
        ax.plot(edge[cost], edge[objective], color="tab:orange", marker="o", label="Pareto front")
        baseline = trials[trials["training_decoding"]]
        ax.scatter(baseline[cost], baseline[objective], marker="s", color="black", label="training decoding")
        chosen = trials[trials["chosen"]]
        ax.scatter(chosen[cost], chosen[objective], marker="*", s=250, color="tab:red", label="chosen", zorder=3)
        ax.set(xlabel=label)
    axes[0].set(ylabel=objective, title="quality against length")
    axes[1].set(title="quality against decoding time")
    axes[1].legend(fontsize="small")
    fig.suptitle(f"{experiment.space.name}: decoding trials (validation)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(experiment: Experiment) -> Path:
    """Write the plots and index.html into ``<experiment>/report``; return the page's path."""
    out_dir = experiment.path / REPORT_DIR
    out_dir.mkdir(exist_ok=True)
    importance = experiment.importance()
    plots = {
        "Learning curves": plot_curves(experiment, out_dir / "curves.png"),
        "Objective against each setting": plot_settings(experiment, out_dir / "settings.png"),
        "Parallel coordinates": plot_parallel_coordinates(experiment, out_dir / "parallel_coordinates.png"),
        "Importance": plot_importance(importance, out_dir / "importance.png"),
        "Decoding: ROUGE-L against length and time": plot_decoding(experiment, out_dir / "decoding.png"),
    }
    plots = {title: plot for title, plot in plots.items() if plot is not None}
    selection_html = _selection_html(experiment.path) + _family_importance_html(experiment)
    warnings_html = "".join(f"<li>{html.escape(w)}</li>" for w in experiment.boundary_warnings())
    sections = "".join(
        f"<h2>{html.escape(t)}</h2><img src='{p.name}' alt='{html.escape(t)}'>" for t, p in plots.items()
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(experiment.space.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px}} img{{max-width:100%}}</style></head>
<body><h1>Experiment {html.escape(experiment.space.name)}</h1>
<p>Objective: {experiment.metric} ({experiment.space.mode}); {len(experiment.trials)} trials.</p>
{f"<h2>Warnings</h2><ul>{warnings_html}</ul>" if warnings_html else ""}
<h2>Leaderboard</h2>{experiment.leaderboard().to_html(index=False, table_id="leaderboard", float_format=lambda v: f"{v:.4g}")}
{selection_html}
{sections}</body></html>"""
    index = out_dir / "index.html"
    atomic_write_text(index, page)
    return index


def _family_importance_html(experiment) -> str:
    """Importance within each model family's finished trials, where there are several families."""
    try:
        by_family = experiment.importance_by_family()
    except Exception:  # noqa: BLE001 (no study yet, or one Optuna cannot read: the page goes on without it)
        return ""
    rows = {f"{family} ({s.attrs['trials']} trials)": s for family, s in by_family.items() if not s.empty}
    if len(by_family) < 2 or not rows:
        return ""
    table = pd.DataFrame(rows).T.to_html(table_id="importance-by-family", float_format=lambda v: f"{v:.3f}", na_rep="")
    return f"<h2>Importance within each model family</h2>{table}"


def _selection_html(experiment_dir: Path) -> str:
    """The re-scored candidates with their 95% intervals and differences from the leader (selection.json)."""
    chosen = read_selection(experiment_dir)
    if not chosen:
        return ""
    rows = pd.DataFrame(chosen["candidates"])
    for column in ("interval", "difference_from_leader"):
        if column in rows:
            rows[column] = rows[column].map(lambda v: "" if v is None else ", ".join(f"{x:+.4f}" for x in v))
    noise = f"<p>{html.escape(CHOSEN_WITHIN_NOISE)}</p>" if chosen.get("within_noise") else ""
    return (
        f"<h2>Selection on all of validation ({html.escape(chosen['metric'])})</h2>"
        f"<p>Chosen: trial {html.escape(str(chosen['chosen']['trial_id']))} at step {chosen['chosen']['step']}.</p>"
        f"{noise}{rows.to_html(index=False, table_id='selection', float_format=lambda v: f'{v:.4g}')}"
    )


@dataclass
class PublishedReport:
    page: Path
    stored: str  # where the experiment keeps it (a URI for a bucket experiment)
    tracked: str | None = None  # "MLflow run ID at URI" where the search was tracked and the report logged there
    not_tracked: str | None = None  # why a tracked search's run did not get it


def publish_report(experiment: Experiment) -> PublishedReport:
    """Write the report, keep it beside the experiment, and log it to the search's MLflow run where there is one."""
    from tune_dialsum.tracking import log_report, read_tracking, require_mlflow

    page = write_report(experiment)
    experiment.store.push(page.parent)
    published = PublishedReport(page, experiment.store.where(page))
    tracked = read_tracking(experiment.path)
    if tracked is not None:
        run = f"MLflow run {tracked.parent_run_id}"
        try:
            require_mlflow()
            log_report(tracked, page.parent)
            published.tracked = f"{run} at {tracked.uri}"
        except Exception as error:  # noqa: BLE001 (the report is written; the tracker is a copy of it)
            published.not_tracked = f"{run}: {one_line(error)}"
    return published
