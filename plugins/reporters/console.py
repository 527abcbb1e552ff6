"""Prints the leaderboard, the forgetting table, contamination counts and the gate's
decisions after a run."""

from __future__ import annotations

import harness
from harness import ReportContext, query, render_table


class ConsoleReporter(harness.Reporter):
    #: (title, query): each table printed when it has rows for the suite
    TABLES = (
        ("Leaderboard",
         "SELECT model, variant, method, evaluator, role, metric, value, stderr, n "
         "FROM leaderboard WHERE suite = ?"),
        ("Forgetting (general and safety evaluators; forgetting > 0 = worse than base)",
         "SELECT model, variant, evaluator, metric, base_value, variant_value, delta, "
         "forgetting, paired_test, p_value FROM forgetting WHERE suite = ?"),
        ("Contamination (items flagged; harness report lists them)",
         "SELECT model, variant, evaluator, method, flagged, items FROM contamination_summary "
         "WHERE suite = ? AND flagged > 0"),
        # one row per variant; the reason is that of each evaluator that decided it
        ("Gate (may each variant ship? harness report shows each evaluator's loss)",
         "SELECT model, variant, any_value(variant_decision) AS decision, "
         "string_agg(coalesce(evaluator || ': ', '') || reason, '; ' ORDER BY evaluator) "
         "FILTER (WHERE decision = variant_decision) AS reason "
         "FROM gate WHERE suite = ? GROUP BY model, variant, variant_key "
         "ORDER BY model, variant"),
    )

    def report(self, context: ReportContext) -> None:
        if not context.store_path.exists():
            return
        for title, sql in self.TABLES:
            columns, rows = query(context.store_path, sql, [context.suite_name])
            if rows:
                context.console.print(render_table(title, columns, rows))


@harness.hookimpl
def harness_register_reporters(register):
    register("console", ConsoleReporter)
