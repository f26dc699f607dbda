"""The results table of grouped runs: one row per entry, written as results.md, results.csv,
results.json and figures.

Every seed is accounted for: mean and standard deviation are over completed seeds only, and the
status column says how many seeds completed, diverged, failed or are unfinished. Finding and
reading the run folders is :mod:`rnnlab.run_records`'s job.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rnnlab import checkpoint as ckpt
from rnnlab.atomic import atomic_write_json, atomic_write_text
from rnnlab.budget import baseline_budget_note, budget_warning, reported_after, reported_note, trained_text
from rnnlab.checkpoint import CONFUSION
from rnnlab.errors import CheckpointError, option, warn_caller
from rnnlab.config import describe_model, to_dict
from rnnlab.out_folders import of_runs, refuse_other_files
from rnnlab.run_records import RESULTS_SCHEMA, RunRecord, collect
from rnnlab.stats import baseline_of, check_baseline, compare_with, differences_table, test_set_warning
from rnnlab.sweep_figure import sweep_series

__all__ = ["COLUMNS", "RESULTS_CSV", "RESULTS_JSON", "RESULTS_MD", "STATUS_ORDER", "RunRecord", "aggregate",
           "aggregate_entry", "build_report", "check_baseline", "collect", "compare_with", "differences_table",
           "markdown_table", "render_markdown", "report_groups", "rounded", "status_text", "sweep_series", "to_csv",
           "write_figures", "write_results"]

RESULTS_MD, RESULTS_CSV, RESULTS_JSON = "results.md", "results.csv", "results.json"
STATUS_ORDER = ("completed", "diverged", "failed", "interrupted", "stopped", "running", "unfinished")

# Columns of results.csv, in order (results.json's entries carry the same keys, plus "runs").
COLUMNS = (
    "entry", "architecture", "parameters", "seeds", "completed", "diverged", "failed", "unfinished", "status",
    "test_accuracy_mean", "test_accuracy_std", "test_accuracy_min", "test_accuracy_max", "val_accuracy_mean",
    "reported_test_accuracy", "delta_vs_reported", "reported_note", "train_seconds_mean", "samples_per_second_mean",
    "iterations", "epochs", "batch_size", "optimizer", "protocol", "source",
    "baseline", "delta_vs_baseline", "delta_ci95_low", "delta_ci95_high", "delta_method", "delta_seeds",
    "baseline_seeds", "delta_verdict", "delta_comparisons", "delta_level", "delta_budget_note", "delta_data_note",
)


# --------------------------------------------------------------------------- aggregation


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def status_text(counts: Counter, total: int) -> str:
    """e.g. ``3/3 completed`` or ``2/3 completed, 1 diverged``."""
    parts = [f"{counts.get('completed', 0)}/{total} completed"]
    parts += [f"{counts[s]} {s}" for s in STATUS_ORDER[1:] if counts.get(s)]
    parts += [f"{n} {s}" for s, n in sorted(counts.items()) if s not in STATUS_ORDER and n]
    return ", ".join(parts)


def aggregate_entry(entry: str, records: list[RunRecord]) -> dict[str, Any]:
    """One row of the table: accuracy over completed seeds, with every seed's status counted."""
    counts = Counter(r.status for r in records)
    done = [r for r in records if r.status == "completed" and r.summary.get("test_accuracy") is not None]
    accs = [float(r.summary["test_accuracy"]) for r in done]
    vals = [float(r.summary["val_accuracy"]) for r in done if r.summary.get("val_accuracy") is not None]
    # Time and throughput of completed seeds (a diverged seed stopped early); else of any that ran.
    timed = [r for r in done if r.summary.get("train_seconds") is not None] or \
        [r for r in records if r.summary.get("train_seconds") is not None and r.status != "failed"]
    config = next((r.config for r in records if r.config is not None), None)
    reference = next((r.summary["reference"] for r in records if r.summary.get("reference")), None)
    from rnnlab.presets import changes_the_model, reference_budget, reference_for

    if config is not None and config.preset:
        # not set against the tutorial's figure where the entry changed its model (older summaries kept it)
        reference = None if changes_the_model(config) else reference or reference_for(config.preset)
    reported = (reference or {}).get("reported_test_accuracy")
    mean = _mean(accs)
    row: dict[str, Any] = {
        "entry": entry,
        "architecture": describe_model(config.model) if config else None,
        "parameters": next((r.summary["parameters"] for r in records if r.summary.get("parameters")), None),
        "seeds": len(records),
        "completed": counts.get("completed", 0),
        "diverged": counts.get("diverged", 0),
        "failed": counts.get("failed", 0),
        "unfinished": len(records) - sum(counts.get(s, 0) for s in ("completed", "diverged", "failed")),
        "status": status_text(counts, len(records)),
        "test_accuracy_mean": mean,
        "test_accuracy_std": statistics.stdev(accs) if len(accs) >= 2 else None,
        "test_accuracy_min": min(accs) if accs else None,
        "test_accuracy_max": max(accs) if accs else None,
        "val_accuracy_mean": _mean(vals),
        "reported_test_accuracy": reported,
        "delta_vs_reported": mean - reported if mean is not None and reported is not None else None,
        "train_seconds_mean": _mean([float(r.summary["train_seconds"]) for r in timed]),
        "samples_per_second_mean": _mean([float(r.summary["samples_per_second"]) for r in timed
                                          if r.summary.get("samples_per_second") is not None]),
        "iterations": max((int(r.summary.get("iterations", 0)) for r in records), default=None),
        "epochs": max((float(r.summary.get("epochs", 0)) for r in records), default=None),
        "batch_size": config.train.batch_size if config else None,
        "optimizer": config.train.optimizer if config else None,
        "protocol": config.train.protocol if config else None,
        "source": (reference or {}).get("source"),
        "reference_notes": (reference or {}).get("notes") or None,
        "reference_budget": reference_budget(reference),  # what the reported figure was trained for
        "config": to_dict(config) if config else None,  # results.json only: a report rebuilt from it has it
    }
    for key, value in (records[0].carried if records else {}).items():  # from a results.json without config
        if row.get(key) is None:
            row[key] = value
    row["runs"] = [{
        "seed": r.seed, "status": r.status, "dir": str(r.dir),
        "test_accuracy": r.summary.get("test_accuracy"), "val_accuracy": r.summary.get("val_accuracy"),
        "train_seconds": r.summary.get("train_seconds"), "samples_per_second": r.summary.get("samples_per_second"),
        "iterations": r.summary.get("iterations"), "epochs": r.summary.get("epochs"),
        "stopped_early": r.summary.get("stopped_early"), "error": r.error if r.status != "completed" else None,
        "test_set": r.summary.get("test_set"),  # which test sequences its accuracy is of (None: not recorded)
    } for r in records]
    # The reported figure came after the tutorial's full budget: set against a run of another, the
    # difference would mostly measure the budget. Withheld then, with the reason.
    row["reported_note"] = reported_note(row)
    if row["reported_note"]:
        row["delta_vs_reported"] = None
    return row


def aggregate(groups: dict[str, list[RunRecord]], *, baseline: str | None = None) -> list[dict[str, Any]]:
    """One row per entry, in the order the entries were first seen, each with its difference from
    ``baseline`` (default: see :func:`rnnlab.stats.compare_with`)."""
    check_baseline(baseline, list(groups))
    rows = [aggregate_entry(entry, records) for entry, records in groups.items()]
    chosen = compare_with(rows, baseline)
    base = next((r for r in rows if r["entry"] == chosen), None)
    for row in rows:
        row["delta_budget_note"] = baseline_budget_note(row, base) if row["delta_vs_baseline"] is not None else None
    return rows


# --------------------------------------------------------------------------- writing


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


WITHHELD = "—†"  # a Δ vs reported not given: the run's budget is not the reference's


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results table in Markdown (accuracy in percent, mean ± std over completed seeds), with
    a note under it for each Δ vs reported withheld (see :func:`rnnlab.budget.reported_note`)."""
    header = ["entry", "architecture", "params", "budget", "test acc % (mean ± std)", "min–max", "val acc %",
              "tutorial reported %", "Δ vs reported", "train time s", "samples/s", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for row in rows:
        acc = "–"
        if row["test_accuracy_mean"] is not None:
            acc = f"{row['test_accuracy_mean']:.2f}"
            if row["test_accuracy_std"] is not None:
                acc += f" ± {row['test_accuracy_std']:.2f}"
            acc += f" (n={row['completed']})"
        spread = "–" if row["test_accuracy_min"] is None else \
            f"{row['test_accuracy_min']:.2f}–{row['test_accuracy_max']:.2f}"
        delta = WITHHELD if row.get("reported_note") else \
            "–" if row["delta_vs_reported"] is None else f"{row['delta_vs_reported']:+.2f}"
        cells = [f"`{row['entry']}`", _fmt(row["architecture"]), _fmt(row["parameters"]), trained_text(row), acc,
                 spread, _fmt(row["val_accuracy_mean"]), _fmt(row["reported_test_accuracy"]), delta,
                 _fmt(row["train_seconds_mean"], 1), _fmt(row["samples_per_second_mean"], 0), row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    withheld = [row for row in rows if row.get("reported_note")]
    if withheld:
        lines += ["", "† Δ vs reported not given: the tutorial reported its figure after its own budget, and "
                  "a difference from a run of another budget would measure mostly the budget"]
        lines += [f"- `{row['entry']}`: {row['reported_note']}" for row in withheld]
    return "\n".join(lines)


def _problems(rows: list[dict[str, Any]]) -> list[str]:
    """One line per seed that did not complete, with its error, so nothing is dropped silently."""
    out = []
    for row in rows:
        for run in row["runs"]:
            if run["status"] != "completed":
                why = f": {run['error']}" if run.get("error") else ""
                out.append(f"- `{row['entry']}` seed {run['seed']}: **{run['status']}**{why} (`{run['dir']}`)")
    return out


def render_markdown(rows: list[dict[str, Any]], *, title: str = "rnnlab results",
                    context: dict[str, Any] | None = None, plots: list[str] | None = None) -> str:
    lines = [f"# {title}", ""]
    for key, value in (context or {}).items():
        lines.append(f"- {key}: {value}")
    lines += ["- test accuracy: mean ± sample standard deviation over the *completed* seeds (n); "
              "diverged and failed seeds are counted in the last column, never averaged in",
              "- budget: the iterations (it) and epochs (ep) the completed seeds trained, as their summary.json "
              "records them", ""]
    lines += [markdown_table(rows), ""]
    differences = differences_table(rows)
    if differences:
        lines += [f"## Differences from `{baseline_of(rows)}`", "", differences, ""]
    problems = _problems(rows)
    if problems:
        lines += ["## Seeds that did not complete", "", *problems, ""]
    sources = [(r["entry"], r["source"], "; ".join(filter(None, (r.get("reference_notes"), reported_after(r)))))
               for r in rows if r.get("source")]
    if sources:
        lines += ["## Sources", "", *[f"- `{e}`: {s}" + (f" — {n}" if n else "") for e, s, n in sources], ""]
    if plots:
        lines += ["## Figures", "", *[f"![{Path(p).stem}]({p})" for p in plots], ""]
    return "\n".join(lines).rstrip() + "\n"


# Decimal places of the figures a report derives, as results.csv and results.json hold them: the
# arithmetic of a mean or a difference leaves float noise (-6.1800000000000015) no reader wants.
# Accuracies in percent (and differences of them) keep 4, as each run's summary.json does; seconds 3
# and samples/s 1, as the engine writes a run's; a level (a probability) 6. The runs' own figures, and
# min and max (two of them), are written as measured. Nothing reads these back: a report rebuilt from
# a results.json computes them again from its runs.
DECIMALS = {
    **dict.fromkeys(("test_accuracy_mean", "test_accuracy_std", "val_accuracy_mean", "delta_vs_reported",
                     "delta_vs_baseline", "delta_ci95_low", "delta_ci95_high"), 4),
    "train_seconds_mean": 3, "samples_per_second_mean": 1, "delta_level": 6,
}


def rounded(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of a report row with its derived figures rounded to :data:`DECIMALS`, as it is written."""
    return {key: round(value, DECIMALS[key]) + 0.0  # + 0.0: no -0.0 from a tiny negative
            if key in DECIMALS and isinstance(value, float) else value for key, value in row.items()}


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
    return buffer.getvalue()


def write_results(rows: list[dict[str, Any]], out_dir: str | Path, *, title: str = "rnnlab results",
                  context: dict[str, Any] | None = None, plots: list[str] | None = None) -> dict[str, Path]:
    """Write results.md, results.csv and results.json into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / RESULTS_MD, "csv": out / RESULTS_CSV, "json": out / RESULTS_JSON}
    atomic_write_text(paths["md"], render_markdown(rows, title=title, context=context, plots=plots))
    written = [rounded(row) for row in rows]  # the rows themselves (returned, plotted) keep every digit
    atomic_write_text(paths["csv"], to_csv(written))
    atomic_write_json(paths["json"], {
        "schema_version": RESULTS_SCHEMA,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "context": context or {},
        "columns": list(COLUMNS),
        "entries": written,
    })
    return paths


def build_report(paths: list[str | Path], out_dir: str | Path, *, plots: bool = True,
                 title: str = "rnnlab results", context: dict[str, Any] | None = None,
                 baseline: str | None = None) -> list[dict[str, Any]]:
    """Collect the runs under ``paths`` (or in a results.json), then :func:`report_groups`. Returns the rows.

    A report rebuilt from the results.json in ``out_dir`` keeps the learning curves there, which
    it cannot redraw without the run folders."""
    groups = collect(paths)
    out = ckpt.check_out_dir(Path(out_dir), keyword="out_dir")
    if not _holds_an_input(out, paths):  # a report beside its own inputs (the default) is not among strangers'
        refuse_other_files(out, of_runs, keyword="out_dir", kind="a report", example=out / "report")
    # A compare folder's results are its own runs': a report of others would replace them
    if (out / "compare.json").is_file() and not any(Path(p).resolve() in (out.resolve(), out.resolve() / RESULTS_JSON)
                                                   for p in paths):
        raise CheckpointError(f"{out} is a compare folder, and its results files report its own runs; give "
                              f"another {option('--out', 'folder (out_dir=)')} for a report of "
                              f"{', '.join(map(str, paths))}")
    in_place = any(Path(p).is_file() and Path(p).resolve().parent == out.resolve() for p in paths)
    return report_groups(groups, out, plots=plots, title=title, context=context, baseline=baseline,
                         keep_figures=in_place)


FIGURES = ("learning_curves.png", "accuracy.png", "sweep.png")


def _holds_an_input(out: Path, paths: list[str | Path]) -> bool:
    """Whether ``out`` is, or holds, one of the report's inputs: a results file in it (whatever its
    name) or runs under it at any depth, as ``rnnlab report`` writes by default."""
    where = out.resolve()
    return any(where == Path(p).resolve() or where in Path(p).resolve().parents for p in paths)


def report_groups(groups: dict[str, list[RunRecord]], out_dir: str | Path, *, plots: bool = True,
                  title: str = "rnnlab results", context: dict[str, Any] | None = None,
                  baseline: str | None = None, keep_figures: bool = False) -> list[dict[str, Any]]:
    """Aggregate grouped runs, draw the figures and write the result files. Returns the rows.
    With ``keep_figures``, learning curves already in ``out_dir`` stay as they are where entries
    come from a results.json (which has no curves to draw them again) and are listed."""
    rows = aggregate(groups, baseline=baseline)
    curves = Path(out_dir) / "learning_curves.png"
    from_reports = [r for records in groups.values() for r in records if r.results_file is not None]
    keep = {curves.name} if keep_figures and from_reports and curves.is_file() else set()
    if keep and len(from_reports) < sum(map(len, groups.values())):
        warn_caller(f"{curves} kept as it was: the entries of a results.json have no curves to draw again; "
                    f"for the other runs' curves, give another {option('--out', 'folder (out_dir=)')}",
                    RuntimeWarning)
    for warning in (budget_warning(rows), test_set_warning(rows)):
        if warning:  # the table says it too; a script reading only the numbers should hear it
            warn_caller(warning.replace("`", ""), RuntimeWarning)
    figures = write_figures(groups, rows, out_dir, keep=keep) if plots else []
    write_results(rows, out_dir, title=title, context=context,
                  plots=[name for name in FIGURES if name in figures or name in keep] if plots else [])
    return rows


# What drawing a figure can raise from its inputs or the machine: a read-only folder (OSError), a
# damaged value in a run's files (ValueError, TypeError), a figure too large for memory (MemoryError).
FIGURE_FAILURES = (OSError, ValueError, TypeError, MemoryError)


def write_figures(groups: dict[str, list[RunRecord]], rows: list[dict[str, Any]], out_dir: str | Path, *,
                  keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Learning curves and accuracy bars in ``out_dir``; ``confusion.png`` in each run folder lacking one.

    A figure that cannot be drawn is a warning naming it, never an error: the results files, written
    after the figures, matter more. Returns the figure paths relative to ``out_dir`` (for results.md).
    """
    from rnnlab import plots  # late import: matplotlib is slow to import

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = {entry: [r.metrics() for r in records if r.status == "completed"] for entry, records in groups.items()}
    partial = {entry: [r.metrics() for r in records if r.status != "completed"] for entry, records in groups.items()}
    swept = sweep_series(groups, rows)
    figures = {  # each draws into the path it is given, or returns None where there is nothing to draw
        "learning_curves.png": lambda path: plots.learning_curves_png(curves, path, title="Learning curves",
                                                                      partial=partial),
        "accuracy.png": lambda path: plots.accuracy_bars_png(rows, path,
                                                             title="Final test accuracy (mean ± std over seeds)"),
        "sweep.png": lambda path: plots.sweep_png(*swept, path) if swept else None}
    written = []
    for name, draw in figures.items():
        if name in keep:  # left as it is (see report_groups)
            continue
        try:
            if draw(out / name):
                written.append(name)
        except FIGURE_FAILURES as exc:
            _not_drawn(out / name, exc)
    too_many = []
    for entry, records in groups.items():
        for record in records:
            matrix = record.summary.get("confusion_matrix")
            target = record.dir / CONFUSION
            if not matrix or target.exists():
                continue
            try:
                data = record.summary.get("data")
                labels = plots.class_labels(data.get("class_names") if isinstance(data, dict) else None)
                if plots.confusion_matrix_png(matrix, target, f"{entry}, seed {record.seed}: test set",
                                              labels=labels) is None:
                    too_many.append(record.dir)  # unreadable as a plot; its counts stay in summary.json
            except FIGURE_FAILURES as exc:
                _not_drawn(target, exc)
    if too_many:
        more = f" and {len(too_many) - 1} more" if len(too_many) > 1 else ""
        warn_caller(f"{CONFUSION} not drawn in {too_many[0]}{more}: more than {plots.MAX_CONFUSION_CLASSES} "
                    "classes are too many to read in a plot; `rnnlab eval RUN --json` gives the confusion matrix",
                    RuntimeWarning)
    return written


def _not_drawn(path: Path, exc: BaseException) -> None:
    warn_caller(f"{path} not drawn: {str(exc) or type(exc).__name__}", RuntimeWarning)
