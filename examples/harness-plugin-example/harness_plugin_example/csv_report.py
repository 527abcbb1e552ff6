"""``example/csv``: after each run, write the suite's leaderboard as a CSV file next to
the store (``<store name>-leaderboard.csv``), for spreadsheets and other tools."""

from __future__ import annotations

import csv

import harness
from harness import ReportContext, query


class CsvReporter(harness.Reporter):
    """No options: ``Options`` stays the base's empty ``harness.Options``."""

    def report(self, context: ReportContext) -> None:
        columns, rows = query(
            context.store_path,
            "SELECT model, variant, method, evaluator, role, metric, value, stderr, n "
            "FROM leaderboard WHERE suite = ?", [context.suite_name],
        )
        path = context.store_path.with_name(f"{context.store_path.stem}-leaderboard.csv")
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(rows)
        context.console.print(f"leaderboard written to {path}")
