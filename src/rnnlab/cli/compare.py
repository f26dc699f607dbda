"""``rnnlab compare``: train presets/configs x seeds in parallel; ``rnnlab report``: tables from runs."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

BASELINE_HELP = ("the entry every other is compared with, seed by seed, with a 95%% interval "
                 "(default: the best mean validation accuracy, else test accuracy, among entries with two "
                 "completed seeds)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="train presets or configs for several seeds and compare them",
        description="Train each preset or config file for N seeds (seed 0..N-1) in parallel processes, then "
                    "write results.md, results.csv, results.json and figures. Rerunning the same command skips "
                    "finished seeds and resumes interrupted ones. Example: rnnlab compare --suite tutorials --seeds 3",
    )
    parser.add_argument("items", nargs="*", metavar="PRESET_OR_CONFIG|KEY=VALUE",
                        help="preset names or config files (.toml); KEY=VALUE overrides apply to every entry")
    parser.add_argument("--suite", help="add every preset of a suite (tutorials, plus)")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="train every entry once per value (entry+lr0.001, ...); several --sweep make a grid")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per entry: 0..N-1 (default: 3)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="parallel worker processes (default: the number of CPU cores; where the runs train on "
                             "CUDA GPUs, one per GPU, each worker on its own); each gets cores/jobs torch threads")
    parser.add_argument("--out", metavar="DIR",
                        help="compare folder (default: runs/compare-<suite-or-names>, with a hash of the "
                             "overrides and sweeps appended when there are any, e.g. runs/compare-tutorials-9a5c8d6b "
                             "for --suite tutorials train.lr=0.05)")
    parser.add_argument("--baseline", metavar="ENTRY", help=BASELINE_HELP)
    parser.add_argument("--no-plot", action="store_true", help="skip the figures")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, train nothing")
    parser.set_defaults(func=run_compare)

    report = subparsers.add_parser(
        "report", help="build the comparison table and figures from existing runs",
        description="Aggregate run folders and compare folders (grouped by preset or config label) into "
                    "results.md, results.csv, results.json and figures. A results.json that compare or "
                    "report wrote can stand in for its runs: the tables are rebuilt from the accuracy of "
                    "each seed it lists (with another --baseline, say, or beside new runs), without the "
                    "learning curves, which need the run folders.",
    )
    report.add_argument("paths", nargs="+", metavar="PATH", help="run folders, compare folders, or results.json files")
    report.add_argument("--out", metavar="DIR",
                        help="where to write (default: the folder given, or the one holding the results.json "
                             "given, if one; else ./report)")
    report.add_argument("--baseline", metavar="ENTRY", help=BASELINE_HELP)
    report.add_argument("--no-plot", action="store_true", help="skip the figures")
    report.set_defaults(func=run_report)


def split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """Entries (presets, config files) and KEY=VALUE overrides, in their given order."""
    specs = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    return specs, overrides


def run_compare(args: argparse.Namespace) -> int:
    from rnnlab import compare as cmp
    from rnnlab.checkpoint import training_now
    from rnnlab.entries import default_out_dir, resolve_entries
    from rnnlab.errors import ConfigError
    from rnnlab.locks import Busy
    from rnnlab.stats import check_baseline

    specs, overrides = split_items(args.items)
    entries = resolve_entries(specs, suite=args.suite, overrides=overrides, sweeps=args.sweep)
    check_baseline(args.baseline, [e.name for e in entries])
    jobs = args.jobs if args.jobs is not None else cmp.default_jobs([e.config for e in entries])
    if jobs < 1:
        raise ConfigError(f"--jobs={jobs} must be >= 1")
    out = Path(args.out) if args.out else default_out_dir(entries, args.suite, overrides, sweeps=args.sweep)
    tasks, states = cmp.prepare(entries, out, seeds=args.seeds, jobs=jobs)  # refuses a bad --out before the header
    if not args.dry_run and training_now(out):  # refused before the header too (compare() holds the lock)
        raise Busy(cmp.busy_text(out))
    todo = sum(s != "skip" for s in states.values())
    workers = f"{min(jobs, todo)} workers x {tasks[0].config.train.threads} threads" if todo else "nothing to train"
    if not todo and not args.dry_run:  # e.g. a rerun after a stop while the results were written
        workers += "; the results are written from the finished runs"
    gpus = cmp.gpus_for([t.config for t in tasks]) if todo else 0
    if gpus:
        workers += ", one GPU each" if min(jobs, todo) <= gpus else f", sharing {gpus} GPU(s)"
    print(f"compare: {len(entries)} entries x {args.seeds} seeds = {len(tasks)} runs ({todo} to run, "
          f"{len(tasks) - todo} finished) in {out}; {workers}", file=sys.stderr)
    if args.dry_run:
        for task in tasks:
            print(f"  {states[task.key]:6}  {task.entry} seed {task.seed}  ->  {task.run_dir}")
        return 0
    started, done = time.time(), [0]

    def progress(record: dict[str, Any]) -> None:
        done[0] += 1
        acc = record.get("test_accuracy")
        what = f"{acc:.2f}%" if acc is not None else (record.get("error") or "")
        secs = record.get("train_seconds")
        took = f" ({secs:.0f} s)" if secs is not None else ""
        print(f"[{done[0]}/{len(tasks)} {time.time() - started:5.0f}s] {record['entry']} seed {record['seed']}: "
              f"{record['action']}, {record['status']} {what}{took}", file=sys.stderr, flush=True)

    context = {"overrides": " ".join(overrides) or "none"}
    if args.sweep:
        context["sweeps"] = " ".join(args.sweep)
    if sys.argv[1:2] == ["compare"]:  # called from the shell (not from a test's main([...]))
        context["command"] = shlex.join(["rnnlab", *sys.argv[1:]])
    rows = cmp.compare(entries, out, seeds=args.seeds, jobs=jobs, plots=not args.no_plot, on_result=progress,
                       context=context, baseline=args.baseline)
    return _finish(rows, out, retry_hint=True)


def run_report(args: argparse.Namespace) -> int:
    from rnnlab.report import build_report
    from rnnlab.run_records import read_results

    paths = [Path(p) for p in args.paths]
    single = paths[0] if len(paths) == 1 else None
    out = Path(args.out) if args.out else (single.parent if single and single.is_file() else single or Path("report"))
    context: dict[str, Any] = {"runs from": ", ".join(args.paths)}
    if single is not None and single.is_file() and single.suffix.lower() == ".json":
        # One report rebuilt: how its runs were made (seeds, command) still describes them.
        context = {**read_results(single)[0], "rebuilt from": str(single)}
    elif single is not None and (single / "compare.json").is_file():  # a compare folder: its own record
        context = {**_compare_context(single / "compare.json"), **context}
    rows = build_report(paths, out, plots=not args.no_plot, title="rnnlab report", context=context,
                        baseline=args.baseline)
    return _finish(rows, out)  # 1 if a seed failed or is unfinished, as compare: scripts can tell


def _compare_context(path: Path) -> dict[str, Any]:
    """What compare.json says of how a compare ran (seeds, overrides, command), {} if unreadable."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    return {k: v for k, v in record.items() if k != "entries" and isinstance(v, (str, int, float))}


def _running(row: dict[str, Any]) -> int:
    """How many of a row's seeds another process is training now."""
    return sum(run.get("status") == "running" for run in row.get("runs") or [])


def _finish(rows: list[dict[str, Any]], out: Path, *, retry_hint: bool = False) -> int:
    """Print the table and where the files are; 1 if any seed failed, is unfinished or still training."""
    from rnnlab.report import RESULTS_CSV, RESULTS_JSON, RESULTS_MD, markdown_table
    from rnnlab.stats import differences_table

    print(markdown_table(rows))
    differences = differences_table(rows)
    if differences:
        print(f"\n{differences}")
    print(f"\nwrote {out / RESULTS_MD}, {out / RESULTS_CSV}, {out / RESULTS_JSON}", file=sys.stderr)
    running = [f"{r['entry']} ({r['status']})" for r in rows if _running(r)]
    if running:  # a report of a compare under way: not failures, and their results will come
        print(f"rnnlab: some seeds are still training ({', '.join(running)}); report again when they "
              "have finished", file=sys.stderr)
    # unfinished counts the seeds training too: a seed stopped beside one still training is said so as well
    bad = [r["entry"] for r in rows if r["failed"] or r["unfinished"] > _running(r)]
    if bad:
        hint = "; rerun the same command to retry or resume them" if retry_hint else ""
        print(f"rnnlab: some seeds failed or did not finish ({', '.join(bad)}); see {out / RESULTS_MD}{hint}",
              file=sys.stderr)
        return 1
    return 1 if running else 0
