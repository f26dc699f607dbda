"""Print the README's preset table from two `rnnlab compare` results.json files.

    python scripts/results_table.py docs/results/tutorials/results.json docs/results/plus/results.json

Each tutorial preset is paired with its `-plus` companion (same model and budget, better
recipe); entries without a partner (such as `row-best`) get a row of their own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TARGETS = {"dlw-rnn-a": 97.0, "dlw-rnn-b": 97.5, "dlw-rnn-c": 97.5, "dlw-lstm-a": 98.3, "dlw-lstm-b": 98.5,
           "dlw-lstm-c": 98.5, "rnn-allsteps": 98.3, "row-best": 99.0}


def _entries(path: Path) -> dict[str, dict[str, Any]]:
    return {e["entry"]: e for e in json.loads(path.read_text())["entries"]}


def _acc(entry: dict[str, Any] | None) -> str:
    if entry is None or entry["test_accuracy_mean"] is None:
        return "–"
    std = entry["test_accuracy_std"] or 0.0
    return f"{entry['test_accuracy_mean']:.2f} ± {std:.2f}"


def _time(entry: dict[str, Any] | None) -> str:
    return "–" if entry is None or entry["train_seconds_mean"] is None else f"{entry['train_seconds_mean']:.0f} s"


def _target(name: str, entry: dict[str, Any] | None) -> str:
    target = TARGETS.get(name)
    if target is None or entry is None or entry["test_accuracy_mean"] is None:
        return "–"
    return f"≥ {target:g} {'✓' if entry['test_accuracy_mean'] >= target else '✗'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tutorials", type=Path, help="results.json of the tutorials suite")
    parser.add_argument("plus", type=Path, help="results.json of the plus suite")
    args = parser.parse_args()
    tutorials, plus = _entries(args.tutorials), _entries(args.plus)
    print("| preset | model | tutorial reported | rnnlab, tutorial recipe | time | `-plus` recipe, same budget "
          "| time | target |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name, entry in tutorials.items():
        partner = plus.get(f"{name}-plus")
        reported = entry["reported_test_accuracy"]
        print(f"| `{name}` / `{name}-plus` | {entry['architecture']} | "
              f"{'–' if reported is None else f'{reported:.2f}'} | {_acc(entry)} | {_time(entry)} | "
              f"{_acc(partner)} | {_time(partner)} | {_target(name, partner)} |")
    for name, entry in plus.items():
        if name.endswith("-plus") and name[:-5] in tutorials:
            continue
        print(f"| `{name}` | {entry['architecture']} | – | – | – | {_acc(entry)} | {_time(entry)} "
              f"| {_target(name, entry)} |")


if __name__ == "__main__":
    main()
