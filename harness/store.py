"""The DuckDB store: schema, atomic per-cell writes, read-only queries, views.

DuckDB lets one process write a file and no other process open it meanwhile,
so the driver opens the store, writes one batch (a cell, a variant) in one
transaction and closes it again; ``harness sql`` slips in between writes.
Both sides retry while the other holds the lock.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from harness.errors import StoreLockedError, UserError, first_line

SCHEMA_VERSION = 5

#: SQL that brings a store from version N to N + 1, applied in order inside one transaction
#: when a newer harness opens an older store. New tables need none: ``_TABLES`` creates
#: what is missing (version 2 added ``alerts``, version 3 ``paired_tests``, version 4
#: ``contamination``); only changes to existing tables are listed.
MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE cells ADD COLUMN IF NOT EXISTS info JSON",  # version 2: cells.info
    3: "ALTER TABLE samples ADD COLUMN IF NOT EXISTS min_k DOUBLE; "  # version 4: membership
       "ALTER TABLE samples ADD COLUMN IF NOT EXISTS min_k_plus DOUBLE",
    4: "ALTER TABLE cells ADD COLUMN IF NOT EXISTS backend_path VARCHAR",  # version 5
}

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    suite VARCHAR,
    suite_path VARCHAR,
    harness_version VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    status VARCHAR,
    cells_planned INTEGER,
    cells_cached INTEGER,
    cells_done INTEGER,
    cells_failed INTEGER,
    seconds DOUBLE
);
CREATE TABLE IF NOT EXISTS models (
    model_key VARCHAR,
    name VARCHAR,
    source VARCHAR,
    path VARCHAR,
    first_seen TIMESTAMP,
    PRIMARY KEY (model_key, name)
);
CREATE TABLE IF NOT EXISTS variants (
    variant_key VARCHAR PRIMARY KEY,
    suite VARCHAR,
    model_name VARCHAR,
    model_key VARCHAR,
    name VARCHAR,
    method VARCHAR,
    kind VARCHAR,
    config JSON,
    data_path VARCHAR,
    data_hash VARCHAR,
    path VARCHAR,
    status VARCHAR,
    error VARCHAR,
    steps INTEGER,
    loss_curve DOUBLE[],
    final_loss DOUBLE,
    seconds DOUBLE,
    train_tokens BIGINT,
    tokens_per_second DOUBLE,
    peak_memory_mb DOUBLE,
    trainable_params BIGINT,
    total_params BIGINT,
    run_id VARCHAR,
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS cells (
    cell_key VARCHAR PRIMARY KEY,
    run_id VARCHAR,
    suite VARCHAR,
    model_name VARCHAR,
    model_key VARCHAR,
    variant_name VARCHAR,
    variant_key VARCHAR,
    evaluator VARCHAR,
    evaluator_kind VARCHAR,
    evaluator_key VARCHAR,
    role VARCHAR,
    backend VARCHAR,
    status VARCHAR,
    error VARCHAR,
    traceback VARCHAR,
    seconds DOUBLE,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    info JSON,
    backend_path VARCHAR
);
-- metrics and samples carry no primary key: a cell's rows are replaced by a
-- delete and an insert inside one transaction, which DuckDB's index checks
-- would reject for the same key.
CREATE TABLE IF NOT EXISTS metrics (
    cell_key VARCHAR,
    metric VARCHAR,
    value DOUBLE,
    n INTEGER,
    stderr DOUBLE,
    higher_is_better BOOLEAN,
    is_primary BOOLEAN
);
CREATE TABLE IF NOT EXISTS samples (
    cell_key VARCHAR,
    item_index INTEGER,
    item_id VARCHAR,
    prompt VARCHAR,
    target VARCHAR,
    output VARCHAR,
    score DOUBLE,
    logprobs DOUBLE[],
    extra JSON,
    min_k DOUBLE,
    min_k_plus DOUBLE
);
-- a variant's cell against its base's cell on the same items (harness/stats.py)
CREATE TABLE IF NOT EXISTS paired_tests (
    variant_cell_key VARCHAR,
    base_cell_key VARCHAR,
    test VARCHAR,
    n INTEGER,
    delta DOUBLE,
    ci_low DOUBLE,
    ci_high DOUBLE,
    p_value DOUBLE
);
-- evaluation items found in a variant's tuning data (exact, ngram-<n>) or suddenly
-- likelier under the variant than under its base (min-k, min-k++); harness/contamination.py
CREATE TABLE IF NOT EXISTS contamination (
    analysis_key VARCHAR,
    suite VARCHAR,
    model VARCHAR,
    variant VARCHAR,
    variant_key VARCHAR,
    evaluator VARCHAR,
    evaluator_key VARCHAR,
    item_index INTEGER,
    item_id VARCHAR,
    dataset VARCHAR,
    method VARCHAR,
    score DOUBLE,
    flagged BOOLEAN,
    detail JSON
);
-- thresholds a cell's metrics crossed (drift monitors); replaced with the cell
CREATE TABLE IF NOT EXISTS alerts (
    cell_key VARCHAR,
    metric VARCHAR,
    value DOUBLE,
    threshold DOUBLE,
    message VARCHAR
);
"""

_VIEWS = """
-- the newest finished cell per (suite, model, variant, evaluator), primary metric only
CREATE OR REPLACE VIEW latest_scores AS
SELECT c.suite, c.model_name AS model, c.model_key, c.variant_name AS variant, c.variant_key,
       c.evaluator, c.evaluator_key, c.role, m.metric, m.value, m.stderr, m.n,
       m.higher_is_better, c.cell_key, c.finished_at
FROM cells c JOIN metrics m USING (cell_key)
WHERE c.status = 'done' AND m.is_primary
QUALIFY row_number() OVER (
    PARTITION BY c.suite, c.model_name, c.variant_name, c.evaluator
    ORDER BY c.finished_at DESC) = 1;

CREATE OR REPLACE VIEW leaderboard AS
SELECT s.suite, s.model, s.variant, coalesce(v.method, 'base') AS method, s.evaluator,
       s.role, s.metric, s.value, s.stderr, s.n, s.higher_is_better
FROM latest_scores s LEFT JOIN variants v ON v.variant_key = s.variant_key
ORDER BY s.suite, s.model, s.evaluator, s.variant = 'base' DESC, s.variant;

-- every tuned variant's newest primary score beside its own base's on the same evaluator
-- configuration: the pairing that forgetting, learning_forgetting, clean_scores and the
-- paired tests share
CREATE OR REPLACE VIEW base_pairs AS
SELECT t.suite, t.model, t.model_key, t.variant, t.variant_key, t.evaluator, t.evaluator_key,
       t.role, t.metric, t.higher_is_better, t.n, b.value AS base_value,
       t.value AS variant_value, b.cell_key AS base_cell_key, t.cell_key AS variant_cell_key
FROM latest_scores t
JOIN latest_scores b
  ON b.suite = t.suite AND b.model_key = t.model_key AND b.evaluator_key = t.evaluator_key
 AND b.metric = t.metric AND b.variant = 'base'
WHERE t.variant <> 'base';

-- what tuning cost on abilities it did not target: variant minus its own base
-- on the same evaluator configuration; ``forgetting`` > 0 means worse than base;
-- the paired test on the items' scores gives a 95% interval and a p-value
CREATE OR REPLACE VIEW forgetting AS
SELECT p.suite, p.model, p.variant, coalesce(v.method, '') AS method, p.evaluator, p.role,
       p.metric, p.base_value, p.variant_value, p.variant_value - p.base_value AS delta,
       CASE WHEN p.higher_is_better THEN p.base_value - p.variant_value
            ELSE p.variant_value - p.base_value END AS forgetting,
       p.n, t.test AS paired_test, t.delta AS item_delta, t.ci_low, t.ci_high, t.p_value
FROM base_pairs p
LEFT JOIN variants v ON v.variant_key = p.variant_key
LEFT JOIN paired_tests t
       ON t.variant_cell_key = p.variant_cell_key AND t.base_cell_key = p.base_cell_key
WHERE p.role IN ('general', 'safety')
ORDER BY p.suite, p.model, p.evaluator, p.variant;

-- each variant's gain on its target evaluators against its loss on general and safety ones,
-- both relative to the base's value (0.10 = 10% better, or worse); averaged over evaluators
CREATE OR REPLACE VIEW learning_forgetting AS
WITH changes AS (
    SELECT f.suite, f.model, f.variant, f.variant_key, f.role, t.p_value,
           (CASE WHEN f.higher_is_better THEN f.variant_value - f.base_value
                 ELSE f.base_value - f.variant_value END) / nullif(abs(f.base_value), 0) AS gain
    FROM base_pairs f
    LEFT JOIN paired_tests t
           ON t.variant_cell_key = f.variant_cell_key AND t.base_cell_key = f.base_cell_key
)
SELECT c.suite, c.model, c.variant, coalesce(v.method, '') AS method,
       avg(c.gain) FILTER (WHERE c.role = 'target') AS learning,
       count(*) FILTER (WHERE c.role = 'target') AS target_evaluators,
       avg(-c.gain) FILTER (WHERE c.role IN ('general', 'safety')) AS forgetting,
       count(*) FILTER (WHERE c.role IN ('general', 'safety')) AS general_evaluators,
       count(*) FILTER (WHERE c.role IN ('general', 'safety') AND c.gain < 0
                        AND c.p_value < 0.05) AS significant_losses,
       any_value(v.trainable_params) AS trainable_params, any_value(v.seconds) AS train_seconds
FROM changes c LEFT JOIN variants v ON v.variant_key = c.variant_key
GROUP BY c.suite, c.model, c.variant, v.method
ORDER BY c.suite, c.model, c.variant;

CREATE OR REPLACE VIEW contamination_summary AS
SELECT suite, model, variant, evaluator, method, any_value(dataset) AS dataset,
       count(*) AS items, count(*) FILTER (WHERE flagged) AS flagged,
       avg(CASE WHEN flagged THEN 1.0 ELSE 0.0 END) AS flagged_share,
       avg(score) AS mean_score, max(score) AS max_score
FROM contamination
GROUP BY suite, model, variant, evaluator, method
ORDER BY suite, model, variant, evaluator, method;

-- each variant's per-item mean score on every item and on the items no method flagged,
-- beside its base's on the same two sets; ``score`` is the evaluator's primary metric
CREATE OR REPLACE VIEW clean_scores AS
WITH flags AS (
    SELECT variant_key, evaluator_key, item_index, bool_or(flagged) AS flagged,
           string_agg(DISTINCT method, ', ' ORDER BY method) FILTER (WHERE flagged) AS flagged_by
    FROM contamination GROUP BY variant_key, evaluator_key, item_index
)
SELECT p.suite, p.model, p.variant, p.evaluator, p.role, p.metric, p.base_value AS base_score,
       p.variant_value AS score,
       count(*) AS items,
       count(*) FILTER (WHERE NOT coalesce(f.flagged, false)) AS clean_items,
       avg(s.score) AS item_mean,
       avg(s.score) FILTER (WHERE NOT coalesce(f.flagged, false)) AS clean_item_mean,
       avg(bs.score) AS base_item_mean,
       avg(bs.score) FILTER (WHERE NOT coalesce(f.flagged, false)) AS base_clean_item_mean,
       string_agg(DISTINCT f.flagged_by, '; ') AS flagged_by
FROM base_pairs p
JOIN samples s ON s.cell_key = p.variant_cell_key
LEFT JOIN samples bs ON bs.cell_key = p.base_cell_key AND bs.item_index = s.item_index
LEFT JOIN flags f ON f.variant_key = p.variant_key AND f.evaluator_key = p.evaluator_key
                 AND f.item_index = s.item_index
WHERE EXISTS (SELECT 1 FROM contamination c WHERE c.variant_key = p.variant_key
              AND c.evaluator_key = p.evaluator_key)
GROUP BY ALL
ORDER BY p.suite, p.model, p.evaluator, p.variant;
"""


#: every view ``_VIEWS`` creates, in order
VIEW_NAMES = tuple(re.findall(r"CREATE OR REPLACE VIEW (\w+)", _VIEWS))


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "being used by another process" in text


def connect(path: Path, *, read_only: bool, timeout: float,
            config: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    """Open the store, waiting up to ``timeout`` seconds while another process holds it."""
    if read_only and not path.exists():
        raise UserError(f"{path}: no such store (run a suite first)")
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config or {})
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise UserError(f"{path}: cannot open store: {exc}") from None
            if time.monotonic() >= deadline:
                raise StoreLockedError(
                    f"{path}: store is locked by another process (waited {timeout:.0f} s)"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def lock_timeout_from_env(default: float = 60.0) -> float:
    value = os.environ.get("HARNESS_LOCK_TIMEOUT")
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        raise UserError(f"HARNESS_LOCK_TIMEOUT={value!r}: expected a number of seconds") from None


@contextmanager
def run_lock(store_path: Path, timeout: float, on_wait: Any = None) -> Iterator[None]:
    """Hold ``<store>.lock`` for a whole run: one ``harness run`` per store at a time.

    The DuckDB file itself is opened only for each write, so that ``harness sql`` can
    read between them; this lock (filelock's, released by the OS if the process dies)
    is what keeps a second run out. ``on_wait`` is called once if the lock is taken.
    """
    from filelock import FileLock, Timeout

    store_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(store_path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait()
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise StoreLockedError(
                f"{store_path}: another harness run is using this store (still busy after "
                f"{timeout:.0f} s; HARNESS_LOCK_TIMEOUT sets the wait)"
            ) from None
    try:
        yield
    finally:
        lock.release()


class Store:
    """One DuckDB file. Every write opens, commits and closes."""

    def __init__(self, path: Path, lock_timeout: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout

    @contextmanager
    def _write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = connect(self.path, read_only=False, timeout=self.lock_timeout)
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
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = connect(self.path, read_only=True, timeout=self.lock_timeout)
        try:
            yield con
        finally:
            con.close()

    # -- schema -----------------------------------------------------------------

    def initialise(self) -> None:
        with self._write() as con:
            con.execute(_TABLES)
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
            con.execute(_VIEWS)

    def ensure_current(self) -> None:
        """Bring an existing store up to this harness: its schema version, and every view
        (a view added or changed by a newer harness is missing or stale in an older store
        even at the same schema version). Reads only, when nothing is missing."""
        if not self.path.exists():
            return
        with self.read() as con:
            version = con.execute(
                "SELECT max(value) FROM meta WHERE key = 'schema_version'").fetchone()[0] \
                if "meta" in {r[0] for r in con.execute("SHOW TABLES").fetchall()} else None
            views = {r[0] for r in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        if version != str(SCHEMA_VERSION) or not set(VIEW_NAMES) <= views:
            self.initialise()

    # -- runs -------------------------------------------------------------------

    def start_run(self, run_id: str, suite: str, suite_path: Path, version: str,
                  planned: int, cached: int) -> None:
        with self._write() as con:
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, NULL, 'running', ?, ?, 0, 0, NULL)",
                [run_id, suite, str(suite_path), version, _now(), planned, cached],
            )

    def mark_abandoned_runs(self) -> int:
        """Runs still marked ``running`` died without finishing (the caller holds the run
        lock, so none of them is alive): mark them ``killed``. Returns how many."""
        if not self.path.exists():
            return 0
        with self.read() as con:
            if "runs" not in {row[0] for row in con.execute("SHOW TABLES").fetchall()}:
                return 0
            count = con.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
        if count:  # a re-run with nothing to mark writes nothing
            with self._write() as con:
                con.execute("UPDATE runs SET status = 'killed' WHERE status = 'running'")
        return int(count)

    def record_paired_tests(self, seed: int = 0) -> int:
        """Test every finished variant cell against its base cell (same model and evaluator
        configuration) that has no test yet; returns how many were added."""
        from harness.stats import paired_test

        if not self.path.exists():
            return 0
        with self.read() as con:
            pairs = con.execute("""
                SELECT DISTINCT variant_cell_key, base_cell_key FROM base_pairs b
                WHERE NOT EXISTS (
                    SELECT 1 FROM paired_tests p WHERE p.variant_cell_key = b.variant_cell_key
                      AND p.base_cell_key = b.base_cell_key)
            """).fetchall()
            rows = []
            for variant_cell, base_cell in pairs:
                scores = con.execute("""
                    SELECT b.score, v.score FROM samples b JOIN samples v
                      ON v.item_index = b.item_index AND v.cell_key = ?
                    WHERE b.cell_key = ? AND b.score IS NOT NULL AND v.score IS NOT NULL
                      AND isfinite(b.score) AND isfinite(v.score)
                    ORDER BY b.item_index""", [variant_cell, base_cell]).fetchall()
                if not scores:
                    continue
                result = paired_test([s[0] for s in scores], [s[1] for s in scores], seed=seed)
                rows.append([variant_cell, base_cell, result.test, result.n, result.delta,
                             result.ci_low, result.ci_high, result.p_value])
        if rows:
            with self._write() as con:
                con.executemany("INSERT INTO paired_tests VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def record_contamination(self, replaced: Sequence[tuple[str, str, Sequence[str]]],
                             rows: Sequence[Sequence[Any]]) -> None:
        """Write contamination findings (harness/contamination.py), first removing each
        (variant key, evaluator key)'s findings whose method matches one of the given LIKE
        patterns: those made under older settings."""
        with self._write() as con:
            for variant_key, evaluator_key, patterns in replaced:
                con.execute(
                    "DELETE FROM contamination WHERE variant_key = ? AND evaluator_key = ? "
                    "AND EXISTS (SELECT 1 FROM unnest(?) AS p(pattern) WHERE method LIKE pattern)",
                    [variant_key, evaluator_key, list(patterns)])
            con.executemany("INSERT INTO contamination VALUES "
                            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def finish_run(self, run_id: str, status: str, done: int, failed: int, seconds: float) -> None:
        with self._write() as con:
            con.execute(
                "UPDATE runs SET finished_at = ?, status = ?, cells_done = ?, cells_failed = ?, "
                "seconds = ? WHERE run_id = ?",
                [_now(), status, done, failed, seconds, run_id],
            )

    # -- lookups ------------------------------------------------------------------

    def finished_cells(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are already done (failed cells are retried)."""
        if not self.path.exists() or not keys:
            return set()
        with self.read() as con:
            tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
            if "cells" not in tables:
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

    # -- writes -----------------------------------------------------------------

    def record_model(self, model_key: str, name: str, source: str, path: Path) -> None:
        with self._write() as con:
            con.execute(
                "INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?, ?)",
                [model_key, name, source, str(path), _now()],
            )

    def record_variant(self, row: dict[str, Any]) -> None:
        row = {**row, "created_at": _now()}
        if isinstance(row.get("config"), dict):
            row["config"] = json.dumps(row["config"], sort_keys=True)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._write() as con:
            con.execute(
                f"INSERT OR REPLACE INTO variants ({columns}) VALUES ({marks})", list(row.values())
            )

    def record_cell(self, cell: dict[str, Any], metrics: Sequence[dict[str, Any]],
                    samples: Sequence[dict[str, Any]],
                    alerts: Sequence[dict[str, Any]] = ()) -> None:
        """Write a cell with its metrics, samples and alerts in one transaction."""
        key = cell["cell_key"]
        with self._write() as con:
            for table in ("metrics", "samples", "alerts"):
                con.execute(f"DELETE FROM {table} WHERE cell_key = ?", [key])
            columns = ", ".join(cell)
            marks = ", ".join("?" for _ in cell)
            con.execute(
                f"INSERT OR REPLACE INTO cells ({columns}) VALUES ({marks})", list(cell.values())
            )
            if metrics:
                con.executemany(
                    "INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [[key, m["metric"], m["value"], m.get("n"), m.get("stderr"),
                      m.get("higher_is_better", True), m.get("is_primary", False)]
                     for m in metrics],
                )
            if samples:
                con.executemany(
                    "INSERT INTO samples (cell_key, item_index, item_id, prompt, target, output, "
                    "score, logprobs, extra, min_k, min_k_plus) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [[key, s["item_index"], s.get("item_id"), s.get("prompt"), s.get("target"),
                      s.get("output"), s.get("score"), s.get("logprobs"),
                      json.dumps(s.get("extra") or {}, default=str), s.get("min_k"),
                      s.get("min_k_plus")]
                     for s in samples],
                )
            if alerts:
                con.executemany(
                    "INSERT INTO alerts VALUES (?, ?, ?, ?, ?)",
                    [[key, a["metric"], a["value"], a["threshold"], a["message"]] for a in alerts],
                )


#: what a user's query may not do: write (the connection is read-only), or reach outside the
#: store: ATTACH, COPY TO, reading or writing files, installing extensions. DuckDB enforces
#: both, and ``lock_configuration`` stops a statement from switching them back on.
QUERY_CONFIG = {"enable_external_access": False, "lock_configuration": True}


def query(path: Path, sql: str, params: Sequence[Any] = (),
          timeout: float = 30.0) -> tuple[list[str], list[tuple]]:
    """Run one statement on a read-only, sandboxed connection; return columns and rows."""
    con = connect(Path(path), read_only=True, timeout=timeout, config=QUERY_CONFIG)
    try:
        try:
            cursor = con.execute(sql, list(params))
        except duckdb.Error as exc:
            message = first_line(exc)
            if isinstance(exc, duckdb.PermissionException) or "read-only" in message \
                    or "configuration has been locked" in message:
                raise UserError(f"query refused: queries may only read the store ({message})") \
                    from None
            raise UserError(f"query failed: {message}") from None
        if cursor.description is None:
            return [], []
        columns = [d[0] for d in cursor.description]
        return columns, cursor.fetchall()
    finally:
        con.close()


def export_parquet(path: Path, out: Path, timeout: float = 30.0) -> list[Path]:
    """Write every table and view of the store as ``<out>/<name>.parquet`` (DuckDB's own
    Parquet writer); returns the files. The store is opened read-only."""
    out.mkdir(parents=True, exist_ok=True)
    con = connect(Path(path), read_only=True, timeout=timeout)
    try:
        names = [row[0] for row in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'main' ORDER BY table_type, table_name").fetchall()]
        files = []
        for name in names:
            target = out / f"{name}.parquet"
            con.sql(f'SELECT * FROM "{name}"').write_parquet(str(target))  # a catalogue name
            files.append(target)
        return files
    finally:
        con.close()
