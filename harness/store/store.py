"""The store a run writes: one DuckDB file, one typed method per kind of row, each write
in its own transaction (open, commit, close), so that a killed run loses at most the row
in flight and ``harness sql`` can read between writes. Rows of many (samples, findings)
go in bulk, as one Arrow table per write.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.records import Alert, Metric, ResolvedModel, Sample
from harness.store.bulk import (
    ALERT_COLUMNS,
    METRIC_COLUMNS,
    extras_as_json,
    insert,
    insert_rows,
    insert_samples,
)
from harness.store.connection import connect, now
from harness.store.rows import (
    CellRow,
    ContaminationRow,
    ModelRow,
    TABLE_OF,
    PairedTestRow,
    RunRow,
    VariantRow,
    insert_sql,
    values,
)
from harness.store.schema import MIGRATIONS, SCHEMA_VERSION, TABLES
from harness.store.views import VIEW_NAMES, VIEWS, VIEWS_HASH


#: Every write closes the file, and closing checkpoints it (moves the committed rows from
#: the write-ahead log into the database file). With a WAL threshold of 0 the COMMIT
#: checkpoints instead, and DuckDB skips writing the rows to the log first: the same file
#: after the close, and 100,000 samples written in 1.01 s instead of 1.08 s (shared CPU).
WRITE_CONFIG = {"checkpoint_threshold": "0b"}


class Store:
    """One DuckDB file. Every write opens, commits and closes."""

    def __init__(self, path: Path, lock_timeout: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout

    @contextmanager
    def _write(self) -> Iterator[Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = connect(self.path, read_only=False, timeout=self.lock_timeout, config=WRITE_CONFIG)
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    @contextmanager
    def read(self) -> Iterator[Any]:
        con = connect(self.path, read_only=True, timeout=self.lock_timeout)
        try:
            yield con
        finally:
            con.close()

    def _tables(self, con: Any) -> set[str]:
        return {row[0] for row in con.execute("SHOW TABLES").fetchall()}

    # -- schema -----------------------------------------------------------------

    def initialise(self) -> None:
        with self._write() as con:
            con.execute(TABLES)
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                con.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise UserError(
                    f"{self.path}: store has schema version {row[0]}, written by a newer "
                    f"harness; this one reads up to version {SCHEMA_VERSION}"
                )
            elif int(row[0]) < SCHEMA_VERSION:
                for version in range(int(row[0]), SCHEMA_VERSION):
                    if version in MIGRATIONS:
                        con.execute(MIGRATIONS[version])
                con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                            [str(SCHEMA_VERSION)])
            con.execute(VIEWS)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('views', ?)", [VIEWS_HASH])

    def ensure_current(self) -> None:
        """Bring an existing store up to this harness: its schema version, and every view
        (a view added or changed by a newer harness is missing or stale in an older store
        even at the same schema version: the store records which views it holds). Reads
        only, when nothing is missing."""
        if not self.path.exists():
            return
        with self.read() as con:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall()) \
                if "meta" in self._tables(con) else {}
            views = {r[0] for r in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        if (meta.get("schema_version") != str(SCHEMA_VERSION) or meta.get("views") != VIEWS_HASH
                or not set(VIEW_NAMES) <= views):
            self.initialise()

    # -- runs -------------------------------------------------------------------

    def start_run(self, run: RunRow) -> None:
        with self._write() as con:
            con.execute(insert_sql(RunRow), values(run))

    def finish_run(self, run_id: str, status: str, done: int, failed: int, seconds: float) -> None:
        with self._write() as con:
            con.execute(
                "UPDATE runs SET finished_at = ?, status = ?, cells_done = ?, cells_failed = ?, "
                "seconds = ? WHERE run_id = ?",
                [now(), status, done, failed, seconds, run_id],
            )

    def mark_abandoned_runs(self) -> int:
        """Runs still marked ``running`` died without finishing (the caller holds the run
        lock, so none of them is alive): mark them ``killed``. Returns how many."""
        if not self.path.exists():
            return 0
        with self.read() as con:
            if "runs" not in self._tables(con):
                return 0
            count = con.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
        if count:  # a re-run with nothing to mark writes nothing
            with self._write() as con:
                con.execute("UPDATE runs SET status = 'killed' WHERE status = 'running'")
        return int(count)

    # -- lookups ------------------------------------------------------------------

    def finished_cells(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are already done (failed cells are retried)."""
        if not self.path.exists() or not keys:
            return set()
        with self.read() as con:
            if "cells" not in self._tables(con):
                return set()
            rows = con.execute(
                "SELECT cell_key FROM cells WHERE status = 'done' AND cell_key IN "
                "(SELECT unnest(?))",
                [list(keys)],
            ).fetchall()
        return {row[0] for row in rows}

    def trained_variant(self, variant_key: str) -> dict[str, Any] | None:
        """The stored record of a finished tuning run, if any."""
        with self.read() as con:
            cursor = con.execute(
                "SELECT * FROM variants WHERE variant_key = ? AND status = 'done'", [variant_key]
            )
            row = cursor.fetchone()
            if row is None:
                return None
            return dict(zip([d[0] for d in cursor.description], row))

    # -- typed writes: one method per kind of row ------------------------------------

    def write_model(self, model: ResolvedModel) -> None:
        row = ModelRow(model.fingerprint, model.name, model.source, str(model.path), now())
        with self._write() as con:
            con.execute(insert_sql(ModelRow, "INSERT OR IGNORE"), values(row))

    def write_variant(self, row: VariantRow) -> None:
        row.created_at = row.created_at or now()
        with self._write() as con:
            con.execute(insert_sql(VariantRow, "INSERT OR REPLACE"), values(row))

    def write_cell(self, cell: CellRow, metrics: Sequence[Metric] = (),
                   samples: Sequence[Sample] = (), alerts: Sequence[Alert] = ()) -> None:
        """Write a cell with its metrics, samples and alerts in one transaction, replacing
        whatever an earlier attempt at the same cell left."""
        key = cell.cell_key
        with self._write() as con:
            # an earlier attempt's texts stay in item_texts (see bulk.insert_samples)
            for table in ("metrics", "sample_rows", "alerts"):
                con.execute(f"DELETE FROM {table} WHERE cell_key = ?", [key])
            con.execute(insert_sql(CellRow, "INSERT OR REPLACE"), values(cell))
            if metrics:
                insert(con, "metrics", METRIC_COLUMNS, [
                    [key] * len(metrics), [m.name for m in metrics],
                    [float(m.value) for m in metrics], [m.n for m in metrics],
                    [m.stderr for m in metrics], [m.higher_is_better for m in metrics],
                    [m.primary for m in metrics]])
            if samples:
                insert_samples(con, [
                    [key] * len(samples), [s.index for s in samples],
                    [s.item_id for s in samples], [s.prompt for s in samples],
                    [s.target for s in samples], [s.output for s in samples],
                    [s.score for s in samples], [s.logprobs for s in samples],
                    extras_as_json([s.extra for s in samples]),
                    [s.min_k for s in samples], [s.min_k_plus for s in samples],
                    [s.query for s in samples]])
            if alerts:
                insert(con, "alerts", ALERT_COLUMNS, [
                    [key] * len(alerts), [a.metric for a in alerts],
                    [float(a.value) for a in alerts], [a.threshold for a in alerts],
                    [a.message for a in alerts]])

    def write_paired_tests(self, rows: Sequence[PairedTestRow]) -> None:
        if rows:
            with self._write() as con:
                insert_rows(con, PairedTestRow, rows)

    def write_contamination(self, replaced: Sequence[tuple[str, str, Sequence[str]]],
                            rows: Sequence[ContaminationRow]) -> None:
        """Write contamination findings, first removing each (variant key, evaluator key)'s
        findings whose method matches one of the given LIKE patterns: those made under
        older settings."""
        with self._write() as con:
            for variant_key, evaluator_key, patterns in replaced:
                con.execute(
                    "DELETE FROM contamination WHERE variant_key = ? AND evaluator_key = ? "
                    "AND EXISTS (SELECT 1 FROM unnest(?) AS p(pattern) WHERE method LIKE pattern)",
                    [variant_key, evaluator_key, list(patterns)])
            if rows:
                insert_rows(con, ContaminationRow, rows)

    def replace_suite_rows(self, row_type: type, suite: str, rows: Sequence[Any]) -> None:
        """Replace one suite's rows of a table that an analysis remakes whole each run
        (``recipe_tests``, ``gate_decisions``), in one transaction."""
        with self._write() as con:
            con.execute(f"DELETE FROM {TABLE_OF[row_type]} WHERE suite = ?", [suite])
            if rows:
                insert_rows(con, row_type, rows)
