"""The DuckDB store: schema, atomic cell writes, views, read-only queries, the lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import datetime

import pytest

from harness.errors import StoreLockedError, UserError
from harness import Alert, Metric, Sample
from harness.store import SCHEMA_VERSION, CellRow, Store, query


def _cell(store: Store, key: str, variant: str, evaluator: str, value: float, *,
          higher_is_better: bool = True, role: str = "general", evaluator_key: str | None = None,
          finished: datetime = datetime(2026, 1, 1), status: str = "done") -> None:
    store.write_cell(
        CellRow(cell_key=key, run_id="r1", suite="s", model_name="m", model_key="mk",
                variant_name=variant, variant_key=f"vk-{variant}", evaluator=evaluator,
                evaluator_kind="benchmark", evaluator_key=evaluator_key or f"ek-{evaluator}",
                role=role, backend="hf", status=status, error=None, traceback=None,
                seconds=1.0, started_at=finished, finished_at=finished),
        [Metric("score", value, n=10, stderr=0.1, higher_is_better=higher_is_better,
                primary=True),
         Metric("other", -1.0, n=10, primary=False)],
        [Sample(i, item_id=f"i{i}", score=float(i % 2)) for i in range(10)],
    )


@pytest.fixture()
def store(tmp_path) -> Store:
    store = Store(tmp_path / "s.duckdb")
    store.initialise()
    return store


def test_forgetting_is_variant_minus_base_oriented_by_metric(store):
    _cell(store, "c1", "base", "acc-eval", 0.80)
    _cell(store, "c2", "lora", "acc-eval", 0.70)
    _cell(store, "c3", "base", "ppl-eval", 10.0, higher_is_better=False)
    _cell(store, "c4", "lora", "ppl-eval", 12.5, higher_is_better=False)
    _cell(store, "c5", "base", "task", 0.2, role="target")
    _cell(store, "c6", "lora", "task", 0.9, role="target")
    columns, rows = query(store.path, "SELECT evaluator, base_value, variant_value, delta, "
                                      "forgetting FROM forgetting ORDER BY evaluator")
    assert rows == [
        ("acc-eval", 0.80, 0.70, pytest.approx(-0.10), pytest.approx(0.10)),
        ("ppl-eval", 10.0, 12.5, 2.5, 2.5),  # higher perplexity is worse: forgetting > 0
    ]  # the target evaluator is not a forgetting probe


def test_forgetting_pairs_only_the_same_evaluator_configuration(store):
    _cell(store, "c1", "base", "e", 0.8, evaluator_key="config-A")
    _cell(store, "c2", "lora", "e", 0.7, evaluator_key="config-B")
    assert query(store.path, "SELECT * FROM forgetting")[1] == []


def test_leaderboard_shows_the_newest_finished_cell(store):
    _cell(store, "old", "base", "e", 0.1, finished=datetime(2026, 1, 1))
    _cell(store, "new", "base", "e", 0.2, finished=datetime(2026, 2, 1))
    _cell(store, "bad", "base", "e", 0.9, finished=datetime(2026, 3, 1), status="failed")
    _, rows = query(store.path, "SELECT variant, method, metric, value FROM leaderboard")
    assert rows == [("base", "base", "score", 0.2)]


def test_rewriting_a_cell_replaces_its_rows(store):
    _cell(store, "c1", "base", "e", 0.1)
    _cell(store, "c1", "base", "e", 0.3)
    counts = query(store.path, "SELECT (SELECT count(*) FROM cells), (SELECT count(*) FROM "
                               "metrics), (SELECT count(*) FROM samples)")[1][0]
    assert counts == (1, 2, 10)


def test_failed_write_leaves_nothing(store):
    with pytest.raises(Exception):
        store.write_cell(CellRow(cell_key="c1", status="done"),
                         [Metric("score", "not a number")], [])
    assert query(store.path, "SELECT count(*) FROM cells")[1] == [(0,)]


def test_sql_is_read_only(store):
    with pytest.raises(UserError, match="read-only"):
        query(store.path, "DELETE FROM cells")
    with pytest.raises(UserError, match="no such store"):
        query(store.path.with_name("missing.duckdb"), "SELECT 1")


@pytest.mark.parametrize("statement", [
    "INSERT INTO meta VALUES ('k', 'v')",
    "DROP TABLE cells",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "COPY (SELECT 1) TO '{tmp}/out.csv'",
    "SELECT * FROM read_csv('{tmp}/secret.csv')",
    "SET enable_external_access = true",
    "INSTALL httpfs",
])
def test_sql_cannot_write_or_reach_outside_the_store(store, tmp_path, statement):
    (tmp_path / "secret.csv").write_text("a\n1\n")
    with pytest.raises(UserError, match="query refused: queries may only read the store"):
        query(store.path, statement.format(tmp=tmp_path))
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.duckdb").exists()
    assert query(store.path, "SELECT count(*) FROM cells")[1] == [(0,)]  # views and tables still read


def test_schema_version_is_checked(store):
    import duckdb

    con = duckdb.connect(str(store.path))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(UserError, match="schema version 99"):
        store.initialise()


def test_a_version_1_store_is_migrated_and_keeps_its_rows(store):
    """Version 1 had no cells.info or backend_path, no samples.min_k or min_k_plus, and no
    alerts, paired_tests or contamination table: opening it adds them, keeps the cells, and records
    the current version."""
    import duckdb

    from .store_versions import as_version_7

    _cell(store, "c1", "base", "e", 0.5)
    as_version_7(store.path)  # samples a table of its own, as before version 8
    con = duckdb.connect(str(store.path))
    con.execute("DROP TABLE alerts")
    con.execute("DROP TABLE paired_tests")
    con.execute("DROP TABLE contamination")
    con.execute("ALTER TABLE cells DROP COLUMN info")
    con.execute("ALTER TABLE cells DROP COLUMN backend_path")
    con.execute("ALTER TABLE samples DROP COLUMN min_k")
    con.execute("ALTER TABLE samples DROP COLUMN min_k_plus")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    store.initialise()
    _, rows = query(store.path, "SELECT cell_key, info, backend_path FROM cells")
    assert rows == [("c1", None, None)]
    _, version = query(store.path, "SELECT value FROM meta WHERE key = 'schema_version'")
    assert version == [(str(SCHEMA_VERSION),)]
    _, columns = query(store.path, "SELECT column_name FROM information_schema.columns "
                                   "WHERE table_name = 'samples' ORDER BY ordinal_position")
    assert [c for (c,) in columns][-3:] == ["min_k", "min_k_plus", "query"]
    _, samples = query(store.path, "SELECT item_id, score, min_k FROM samples ORDER BY item_index")
    assert samples == [(f"i{i}", float(i % 2), None) for i in range(10)]
    _, tables = query(store.path, "SELECT count(*) FROM paired_tests, contamination")
    assert tables == [(0,)]
    _cell(store, "c2", "base", "e2", 0.1)  # writes go on, with alerts possible
    store.write_cell(CellRow(cell_key="c3", status="done", info='{"judge": "x"}'), [], [],
                     [Alert("kl_mean", 1.0, 0.25, "m")])
    _, alerts = query(store.path, "SELECT cell_key, metric FROM alerts")
    assert alerts == [("c3", "kl_mean")]


def _hold_lock(path, seconds: float) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(path)!r})
        print("locked", flush=True)
        time.sleep({seconds})
        con.close()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_reader_waits_for_a_writer_then_reads(store):
    holder = _hold_lock(store.path, 1.5)
    started = time.monotonic()
    assert query(store.path, "SELECT count(*) FROM cells", timeout=30)[1] == [(0,)]
    assert time.monotonic() - started > 0.5
    holder.wait()


def test_lock_held_too_long_is_a_clear_error(store):
    holder = _hold_lock(store.path, 5)
    try:
        with pytest.raises(StoreLockedError, match="store is locked by another process"):
            Store(store.path, lock_timeout=0.5).initialise()
    finally:
        holder.kill()
        holder.wait()


def test_a_second_run_waits_visibly_then_fails_cleanly(tmp_path):
    """While one run holds the store, another says it waits, gives up after
    HARNESS_LOCK_TIMEOUT with exit status 2, and writes nothing."""
    import os

    from .conftest import small_suite

    suite = small_suite(tmp_path, tuners=False)
    lock = tmp_path / "results" / "small.duckdb.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from filelock import FileLock
        import time
        with FileLock({str(lock)!r}):
            print("locked", flush=True)
            time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "harness", "run", str(suite)],
                              capture_output=True, text=True,
                              env={**os.environ, "HARNESS_LOCK_TIMEOUT": "1"})
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2
    assert "waiting for" in done.stdout and "another harness run is using it" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        f"harness: error: {tmp_path / 'results' / 'small.duckdb'}: another harness run is using "
        "this store (still busy after 1 s; HARNESS_LOCK_TIMEOUT sets the wait)")
    assert 1 <= time.monotonic() - started < 60
    assert not (tmp_path / "results" / "small.duckdb").exists()  # nothing written


def test_a_store_missing_a_newer_view_gets_it_and_a_current_one_is_not_rewritten(store):
    """A store written before a view existed (same schema version) is brought up to date
    before a run reads it; a current store is only read."""
    import duckdb

    store.initialise()
    con = duckdb.connect(str(store.path))
    con.execute("DROP VIEW clean_scores")
    con.execute("DROP VIEW base_pairs")
    con.close()
    store.ensure_current()
    _, views = query(store.path, "SELECT view_name FROM duckdb_views() WHERE NOT internal")
    assert {"base_pairs", "clean_scores"} <= {v for (v,) in views}
    before = store.path.stat().st_mtime_ns
    store.ensure_current()
    assert store.path.stat().st_mtime_ns == before


def test_each_row_dataclass_has_its_tables_columns_in_order(store):
    """The typed rows and the schema are one contract: a field the table lacks, or a column
    the row lacks, fails here rather than as a NULL column in a user's store."""
    from harness.store.rows import TABLE_OF, columns
    from harness.store.bulk import (
        ALERT_COLUMNS,
        METRIC_COLUMNS,
        SAMPLE_COLUMNS,
        SAMPLE_ROW_COLUMNS,
    )

    def catalogue(table: str) -> list[str]:
        _, rows = query(store.path, "SELECT column_name FROM information_schema.columns "
                                    "WHERE table_name = ? ORDER BY ordinal_position", [table])
        return [c for (c,) in rows]

    for row_type, table in TABLE_OF.items():
        assert columns(row_type) == catalogue(table), table
    # the rows written from evaluators' records: metrics, samples (the view, and the table
    # its rows go to) and alerts
    for names, table in ((METRIC_COLUMNS, "metrics"), (SAMPLE_COLUMNS, "samples"),
                         (SAMPLE_ROW_COLUMNS, "sample_rows"), (ALERT_COLUMNS, "alerts")):
        assert list(names) == catalogue(table), table


def test_a_version_5_store_gets_the_lineage_and_new_paired_tests(store):
    """Version 6 added the lineage columns of variants and the sufficient statistics of
    paired tests; tests made by version 5's methods (exact McNemar, bootstrap) are dropped,
    to be made again with mid-p McNemar and the paired t-test."""
    import duckdb

    from .store_versions import as_version_7

    as_version_7(store.path)
    con = duckdb.connect(str(store.path))
    for column in ("parent_key", "root_key", "tuner", "recipe_key", "recipe", "seed", "sweep"):
        con.execute(f"ALTER TABLE variants DROP COLUMN {column}")
    for column in ("sd", "lost", "gained"):
        con.execute(f"ALTER TABLE paired_tests DROP COLUMN {column}")
    con.execute("INSERT INTO paired_tests VALUES ('v', 'b', 'mcnemar', 6, 0, 0, 0, 1), "
                "('v', 'b2', 'mcnemar-midp', 6, 0, 0, 0, 1)")
    con.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    con.close()
    store.initialise()
    _, rows = query(store.path, "SELECT base_cell_key, test, sd FROM paired_tests")
    assert rows == [("b2", "mcnemar-midp", None)]
    _, columns = query(store.path, "SELECT column_name FROM information_schema.columns "
                                   "WHERE table_name = 'variants' ORDER BY ordinal_position")
    assert [c for (c,) in columns][-7:] == ["parent_key", "root_key", "tuner", "recipe_key",
                                             "recipe", "seed", "sweep"]


def test_a_changed_view_is_made_again_at_the_same_schema_version(store):
    """A store whose views an earlier harness made (same schema version, other view text)
    gets this harness's views when it is opened."""
    import duckdb

    con = duckdb.connect(str(store.path))
    con.execute("CREATE OR REPLACE VIEW gate AS SELECT 1 AS stale")
    con.execute("UPDATE meta SET value = 'older' WHERE key = 'views'")
    con.close()
    store.ensure_current()
    columns, _ = query(store.path, "SELECT * FROM gate")
    assert "stale" not in columns and "variant_decision" in columns
