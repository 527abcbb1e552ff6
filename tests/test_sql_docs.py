"""docs/sql.md matches the store: every table and view with every column, and every ready
query runs; `harness export` writes each table and view as Parquet."""

from __future__ import annotations

import re

import duckdb
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness import Metric, Sample
from harness.store import CellRow, Store, query

from .conftest import REPO

DOC = (REPO / "docs" / "sql.md").read_text()


@pytest.fixture()
def store(tmp_path) -> Store:
    store = Store(tmp_path / "s.duckdb")
    store.initialise()
    store.write_cell(CellRow(cell_key="c1", run_id="r1", suite="s", variant_name="base",
                             evaluator="e", role="general", status="done"),
                     [Metric("acc", 0.5, primary=True)],
                     [Sample(0, item_id="i0", score=1.0)])
    return store


def _catalogue(path) -> dict[str, list[str]]:
    _, rows = query(path, "SELECT table_name, column_name FROM information_schema.columns "
                          "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position")
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(table, []).append(column)
    return tables


def test_every_table_and_view_is_documented_with_its_columns(store):
    for table, columns in _catalogue(store.path).items():
        section = DOC.split(f"### `{table}` (", 1)
        assert len(section) == 2, f"{table} has no section in docs/sql.md"
        documented = re.findall(r"^\| `(\w+)` \|", section[1].split("\n### ", 1)[0], re.MULTILINE)
        assert documented == columns, table


def test_every_ready_query_runs(store):
    queries = re.findall(r"```sql\n(.*?)```", DOC, re.S)
    assert len(queries) == DOC.count("```sql") >= 5
    for sql in queries:
        query(store.path, sql)  # raises UserError on a column or table that does not exist


def test_export_writes_every_table_and_view_as_parquet(store, tmp_path):
    out = tmp_path / "parquet"
    result = CliRunner().invoke(main, ["export", "--store", str(store.path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in out.glob("*.parquet")) == sorted(_catalogue(store.path))
    assert duckdb.sql(f"SELECT metric, value FROM '{out / 'metrics.parquet'}'").fetchall() == [
        ("acc", 0.5)]
    assert duckdb.sql(f"SELECT variant, value FROM '{out / 'leaderboard.parquet'}'").fetchall() == [
        ("base", 0.5)]
