"""Training budgets in a report: what each entry trained for, whether the accuracy a tutorial
reported is a figure to set it against, and whether entries set against each other trained alike.

A tutorial reported its accuracy after its full budget (3,000 iterations of batch 100, say): a run
of 120 iterations set against that figure measures mostly the shorter training, and so does a
difference between two entries trained for different budgets. Everything here reads a report's
rows (:func:`rnnlab.report.aggregate_entry`), so a report rebuilt from a results.json says the same.

Two budgets are the same when they ran the same iterations of the same batch size (the same
samples: a ``-plus`` preset keeps its tutorial's budget under another protocol) or the same epochs
(a budget given in epochs, whatever the size of a split). A seed that stopped early (train.patience)
counts at the budget it was given: stopping is its recipe's choice, not a shorter budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Budget", "baseline_budget_note", "budget_warning", "budgets_of", "entries_named", "reported_after",
           "reported_note", "trained_text"]

EPOCH_TOLERANCE = 1e-3  # summaries round epochs to 4 decimals


@dataclass(frozen=True)
class Budget:
    """Iterations and/or epochs trained, and the batch size (None where unknown)."""

    iterations: int | None = None
    epochs: float | None = None
    batch_size: int | None = None

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Budget:
        """From a reference's ``budget`` (``{"iterations": 3000, "batch_size": 100}``)."""
        def number(key: str) -> Any:  # an edited file may hold anything: such a value counts as unknown
            value = record.get(key)
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None

        return cls(number("iterations"), number("epochs"), number("batch_size"))

    def same_as(self, other: Budget) -> bool:
        """The same iterations of the same batch size (or of one unknown), or the same epochs."""
        if self.iterations is not None and self.iterations == other.iterations and (
                None in (self.batch_size, other.batch_size) or self.batch_size == other.batch_size):
            return True
        return self.epochs is not None and other.epochs is not None and \
            abs(self.epochs - other.epochs) < EPOCH_TOLERANCE

    def text(self) -> str:
        """e.g. ``120 iterations (0.2 epochs) of batch 100``, ``3 epochs of batch 64``."""
        if self.iterations is not None:
            out = f"{self.iterations:,} iterations" + (f" ({self.epochs:.3g} epochs)" if self.epochs else "")
        elif self.epochs is not None:
            out = f"{self.epochs:g} epochs"
        else:
            return "an unrecorded budget"
        return out + (f" of batch {self.batch_size}" if self.batch_size else "")


def _completed(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in row.get("runs") or [] if r.get("status") == "completed" and r.get("test_accuracy") is not None]


def budgets_of(row: dict[str, Any]) -> list[Budget]:
    """The distinct budgets of a row's completed seeds, as given (see the module's docstring)."""
    batch = row.get("batch_size")
    train = (row.get("config") or {}).get("train") if isinstance(row.get("config"), dict) else None
    out: list[Budget] = []
    for run in _completed(row):
        if isinstance(train, dict) and _stopped_early(run, train):
            budget = Budget(train.get("iterations") or None, train.get("epochs") or None, batch)
        else:
            budget = Budget(run.get("iterations"), run.get("epochs"), batch)
        if budget not in out:
            out.append(budget)
    return out


def _stopped_early(run: dict[str, Any], train: dict[str, Any]) -> bool:
    """Whether a completed seed stopped early (``train.patience``). A results.json written before its
    runs recorded it (no ``stopped_early`` key): a seed that completed short of the budget its config
    gave, under a patience, can only have stopped early."""
    if "stopped_early" in run:
        return bool(run["stopped_early"])
    if not train.get("patience"):
        return False
    if train.get("iterations"):
        return (run.get("iterations") or 0) < train["iterations"]
    return bool(train.get("epochs")) and (run.get("epochs") or 0) < train["epochs"]


def _span(values: list[float], form: str) -> str:
    low, high = min(values), max(values)
    return format(low, form) if low == high else f"{low:{form}}–{high:{form}}"


def trained_text(row: dict[str, Any]) -> str:
    """The budget column of the table, as the seeds recorded it: ``120 it (0.2 ep)``, a range where
    seeds differ (one stopped early); of the completed seeds, else of any that ran."""
    runs = _completed(row) or [r for r in row.get("runs") or [] if r.get("iterations")]
    iterations = [r["iterations"] for r in runs if r.get("iterations") is not None]
    epochs = [r["epochs"] for r in runs if r.get("epochs")]
    if not iterations:
        return "–" if not epochs else f"{_span(epochs, '.3g')} ep"
    return f"{_span(iterations, ',')} it" + (f" ({_span(epochs, '.3g')} ep)" if epochs else "")


def _texts(budgets: list[Budget]) -> str:
    return " or ".join(b.text() for b in budgets) if budgets else "an unrecorded budget"


def reported_note(row: dict[str, Any]) -> str | None:
    """Why a row's accuracy is not set against the figure its tutorial reported (its seeds trained
    for another budget than the reference's), or None where it is, or where there is no figure."""
    if row.get("reported_test_accuracy") is None or row.get("test_accuracy_mean") is None:
        return None
    if not isinstance(row.get("reference_budget"), dict):
        return "the budget the reference was reported after is not recorded"
    reference = Budget.from_dict(row["reference_budget"])
    budgets = budgets_of(row)
    if budgets and all(b.same_as(reference) for b in budgets):
        return None
    counted = [b.iterations for b in budgets if b.iterations is not None]
    if reference.iterations and budgets and len(counted) == len(budgets) and all(
            b.batch_size in (None, reference.batch_size) for b in budgets):
        return f"trained {_span(counted, ',')} of the reference's {reference.iterations:,} iterations"
    return f"trained {_texts(budgets)}; the reference {reference.text()}"


def reported_after(row: dict[str, Any]) -> str:
    """``reported after 3,000 iterations of batch 100``: the budget behind a row's reported figure."""
    if row.get("reported_test_accuracy") is None or not isinstance(row.get("reference_budget"), dict):
        return ""
    return f"reported after {Budget.from_dict(row['reference_budget']).text()}"


def baseline_budget_note(row: dict[str, Any], base: dict[str, Any] | None) -> str | None:
    """How a row's budget differs from the baseline's, None where they are the same (or unknown)."""
    if base is None or row is base:
        return None
    mine, theirs = budgets_of(row), budgets_of(base)
    if not mine or not theirs or all(a.same_as(b) for a in mine for b in theirs):
        return None
    return f"{trained_text(row)} vs the baseline's {trained_text(base)}"


def entries_named(rows: list[dict[str, Any]], what: Callable[[dict[str, Any]], str], most: int = 6) -> str:
    """``rows`` as a warning names them: ```a` what(a), `b` what(b) and 3 more``."""
    named = ", ".join(f"`{r['entry']}` {what(r)}" for r in rows[:most])
    return named + (f" and {len(rows) - most} more" if len(rows) > most else "")


def budget_warning(rows: list[dict[str, Any]]) -> str | None:
    """A warning where entries set against the baseline trained for another budget than it: each
    such difference is the budget's effect as much as the model's or the recipe's."""
    base = next((r for r in rows if r.get("baseline") and r["entry"] == r["baseline"]), None)
    differing = [r for r in rows if r.get("delta_vs_baseline") is not None and baseline_budget_note(r, base)]
    if base is None or not differing:
        return None
    return (f"budgets differ: the baseline `{base['entry']}` trained {trained_text(base)}, "
            f"{entries_named(differing, trained_text)}; "
            "a difference between entries trained for different budgets mixes the effect of the budget with "
            "that of the model and recipe: to compare the models alone, give every entry the same budget")
