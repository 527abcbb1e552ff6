"""The store a run writes: one DuckDB file, one typed method per kind of row, each write
in its own transaction (open, commit, close), so that a killed run loses at most the row
in flight and ``harness sql`` can read between writes. Rows of many (samples, findings)
go in bulk, as one Arrow table per write.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from operator import attrgetter
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.records import Alert, Metric, ResolvedModel, Sample
from harness.store.connection import connect, now
from harness.store.rows import (
    CellRow,
    ContaminationRow,
    ModelRow,
    TABLE_OF,
    PairedTestRow,
    RunRow,
    VariantRow,
    columns,
    insert_sql,
    values,
)
from harness.store.schema import MIGRATIONS, SCHEMA_VERSION, TABLES, TEXT_KEY
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
            # an earlier attempt's texts stay in item_texts (see _insert_samples)
            for table in ("metrics", "sample_rows", "alerts"):
                con.execute(f"DELETE FROM {table} WHERE cell_key = ?", [key])
            con.execute(insert_sql(CellRow, "INSERT OR REPLACE"), values(cell))
            if metrics:
                _insert(con, "metrics", METRIC_COLUMNS, [
                    [key] * len(metrics), [m.name for m in metrics],
                    [float(m.value) for m in metrics], [m.n for m in metrics],
                    [m.stderr for m in metrics], [m.higher_is_better for m in metrics],
                    [m.primary for m in metrics]])
            if samples:
                _insert_samples(con, [
                    [key] * len(samples), [s.index for s in samples],
                    [s.item_id for s in samples], [s.prompt for s in samples],
                    [s.target for s in samples], [s.output for s in samples],
                    [s.score for s in samples], [s.logprobs for s in samples],
                    _json([s.extra for s in samples]),
                    [s.min_k for s in samples], [s.min_k_plus for s in samples],
                    [s.query for s in samples]])
            if alerts:
                _insert(con, "alerts", ALERT_COLUMNS, [
                    [key] * len(alerts), [a.metric for a in alerts],
                    [float(a.value) for a in alerts], [a.threshold for a in alerts],
                    [a.message for a in alerts]])

    def write_paired_tests(self, rows: Sequence[PairedTestRow]) -> None:
        if rows:
            with self._write() as con:
                _insert_rows(con, PairedTestRow, rows)

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
                _insert_rows(con, ContaminationRow, rows)

    def replace_suite_rows(self, row_type: type, suite: str, rows: Sequence[Any]) -> None:
        """Replace one suite's rows of a table that an analysis remakes whole each run
        (``recipe_tests``, ``gate_decisions``), in one transaction."""
        with self._write() as con:
            con.execute(f"DELETE FROM {TABLE_OF[row_type]} WHERE suite = ?", [suite])
            if rows:
                _insert_rows(con, row_type, rows)


# -- the bulk path ----------------------------------------------------------------------
#
# ``executemany`` binds and inserts one row at a time (about 0.8 ms a row: 33 s for a run's
# 40,000 contamination findings). Rows of many go instead as one Arrow table, registered
# on the connection and copied by one ``INSERT INTO ... SELECT``: DuckDB reads Arrow's
# columns without a Python object per value, and the insert is one statement of the
# write's own transaction, so an error or a crash still leaves nothing of it. DuckDB 2.0's
# appender (``con.appender``) converts values exactly as ``executemany`` did, but took
# twice as long for 100,000 samples (0.5 s against 0.25 s, converting and inserting).

METRIC_COLUMNS = ("cell_key", "metric", "value", "n", "stderr", "higher_is_better", "is_primary")
#: a cell's samples as ``write_cell`` sends them: the columns of ``samples`` (the view), the
#: item's prompt, target and query where ``sample_rows`` has their ``text_key``
SAMPLE_COLUMNS = ("cell_key", "item_index", "item_id", "prompt", "target", "output", "score",
                  "logprobs", "extra", "min_k", "min_k_plus", "query")
SAMPLE_ROW_COLUMNS = ("cell_key", "item_index", "item_id", "text_key", "output", "score",
                      "logprobs", "extra", "min_k", "min_k_plus")
ALERT_COLUMNS = ("cell_key", "metric", "value", "threshold", "message")

def _json(extras: Sequence[dict[str, Any]]) -> list[str]:
    """Each sample's ``extra`` as JSON text, by pydantic's serializer (in Rust: 0.08 s per
    100,000 samples against 0.28 s for ``json.dumps``, whose encoder is made anew per call).
    Compact, NaN and infinities written as ``json.dumps`` writes them, a value JSON has no
    type for as its ``str``; sets and tuples become lists, bytes text."""
    from pydantic_core import to_json  # here, not at import: ``harness --help`` stays fast

    return [to_json(extra, inf_nan_mode="constants", fallback=str).decode() if extra else "{}"
            for extra in extras]


def _arrow_types(pa: Any) -> dict[str, Any]:
    """The Arrow type a value of each of the store's column types is sent as. Integer
    columns are missing on purpose: Arrow would truncate a float 6.7 sent as an int64 to 6,
    where DuckDB's cast (what ``executemany`` did) rounds it to 7; so Arrow infers their
    type from the values, and DuckDB casts them on insert as it cast each bound value."""
    text = pa.large_string()  # 64-bit offsets: a column of more than 2 GiB of text too
    return {"VARCHAR": text, "JSON": text, "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_(),
            "DOUBLE[]": pa.list_(pa.float64())}


def _column_types(con: Any, table: str) -> dict[str, str]:
    return dict(con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() "
        "WHERE database_name = current_database() AND table_name = ?", [table]).fetchall())


def _arrow(types: dict[str, str], names: Sequence[str], data: Sequence[Sequence[Any]]) -> Any:
    """The rows as one Arrow table, each column of its store type; None when Arrow will not
    take a value as its column's type (an int item id, a numeric string, a list of strings
    as log-probabilities): DuckDB then converts the rows one by one, as it did."""
    import pyarrow as pa  # here, not at import: ``harness --help`` stays fast

    arrow_types = _arrow_types(pa)
    try:
        return pa.table([pa.array(values, type=arrow_types.get(types[name]))
                         for name, values in zip(names, data)], names=list(names))
    except (pa.ArrowException, OverflowError):
        return None


def _insert(con: Any, table: str, names: Sequence[str], data: Sequence[Sequence[Any]]) -> None:
    """Insert rows given as one sequence per column (``names``) into ``table``, in one
    statement of the caller's transaction."""
    arrow = _arrow(_column_types(con, table), names, data)
    if arrow is None:
        _insert_row_by_row(con, table, names, data)
        return
    quoted = ", ".join(f'"{name}"' for name in names)
    # on an error the write rolls back and closes the connection, and the name goes with it
    # (unregistering in an aborted transaction would raise over the error itself)
    con.register("harness_bulk_rows", arrow)
    con.execute(f"INSERT INTO {table} ({quoted}) SELECT {quoted} FROM harness_bulk_rows")
    con.unregister("harness_bulk_rows")


def _insert_samples(con: Any, data: Sequence[Sequence[Any]]) -> None:
    """Insert a cell's samples (one sequence per column of ``SAMPLE_COLUMNS``), as one
    Arrow table, in the caller's transaction: each item's text (prompt, target and query)
    into ``item_texts`` unless its key is there, every row into ``sample_rows`` with its
    text's key. DuckDB computes
    the keys (``TEXT_KEY``) over the table once, added to it as a column (inside each
    insert, a filter on the key repeated the MD5: 0.15 s more per 100,000 samples).

    Texts are only added: those a rewritten cell no longer refers to stay. ``item_texts``
    has no primary key (its index cost 0.1-0.5 s more per 100,000 new texts, and 6.8 MiB
    of file): this insert's anti-join keeps keys unique, the store having one writer."""
    types = {**_column_types(con, "sample_rows"), "prompt": "VARCHAR", "target": "VARCHAR",
             "query": "VARCHAR"}
    arrow = _arrow(types, SAMPLE_COLUMNS, data)
    if arrow is None:  # DuckDB converts each value as it did, into a table of these columns
        con.execute("CREATE TEMP TABLE harness_bulk_samples ("
                    + ", ".join(f'"{name}" {types[name]}' for name in SAMPLE_COLUMNS) + ")")
        _insert_row_by_row(con, "harness_bulk_samples", SAMPLE_COLUMNS, data)
        arrow = con.sql("SELECT * FROM harness_bulk_samples").to_arrow_table()
        con.execute("DROP TABLE harness_bulk_samples")
    con.register("harness_bulk_rows", arrow)  # see _insert on an error
    keys = con.sql(f"SELECT {TEXT_KEY} FROM harness_bulk_rows").to_arrow_table().column(0)
    con.register("harness_bulk_rows", arrow.append_column("text_key", keys))
    con.execute("INSERT INTO item_texts (text_key, prompt, target, query) "
                "SELECT DISTINCT text_key, prompt, target, query FROM harness_bulk_rows AS new "
                "WHERE text_key IS NOT NULL AND NOT EXISTS ("
                "SELECT 1 FROM item_texts AS old WHERE old.text_key = new.text_key)")
    names = ", ".join(SAMPLE_ROW_COLUMNS)
    con.execute(f"INSERT INTO sample_rows ({names}) SELECT {names} FROM harness_bulk_rows")
    con.unregister("harness_bulk_rows")


def _insert_row_by_row(con: Any, table: str, names: Sequence[str],
                       data: Sequence[Sequence[Any]]) -> None:
    """The store's writes before the bulk path: each value bound and converted (or refused)
    by DuckDB, one row at a time."""
    con.executemany(f"INSERT INTO {table} ({', '.join(names)}) "
                    f"VALUES ({', '.join('?' for _ in names)})", list(zip(*data)))


def _insert_rows(con: Any, row_type: type, rows: Sequence[Any]) -> None:
    """Insert typed rows (:mod:`harness.store.rows`) into their table, column by column."""
    names = columns(row_type)
    _insert(con, TABLE_OF[row_type], names, [list(map(attrgetter(n), rows)) for n in names])
