"""Stores as older harnesses wrote them, made from a current one, for the migration tests."""

from __future__ import annotations

from pathlib import Path

import duckdb

#: the samples table of schema versions 4 to 7 (versions 1 to 3 lacked min_k and min_k_plus)
SAMPLES_V7 = """
CREATE TABLE samples (
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
)"""

#: samples' rows in the order sample_rows holds them (the view itself has no rowid)
SAMPLES_IN_ORDER = """
SELECT r.cell_key, r.item_index, r.item_id, t.prompt, t.target, r.output, r.score, r.logprobs,
       r.extra, r.min_k, r.min_k_plus, t.query
FROM sample_rows r LEFT JOIN item_texts t USING (text_key) ORDER BY r.rowid"""


def samples_as_table(con: duckdb.DuckDBPyConnection, query: bool = False) -> None:
    """Replace the ``samples`` view by the table versions 1 to 7 had, holding the same rows
    in the same order; ``sample_rows`` and ``item_texts`` are left as they are. With
    ``query``, the table has the view's last column too (schema 9's ``query``)."""
    con.execute(f"CREATE TEMP TABLE old_samples AS {SAMPLES_IN_ORDER}")
    if not query:
        con.execute("ALTER TABLE old_samples DROP COLUMN query")
    con.execute("DROP VIEW samples")
    con.execute(SAMPLES_V7)
    if query:
        con.execute("ALTER TABLE samples ADD COLUMN query VARCHAR")
    con.execute("INSERT INTO samples SELECT * FROM old_samples")
    con.execute("DROP TABLE old_samples")


def as_version_7(path: Path) -> None:
    """Turn a current store into the layout schema version 7 wrote: ``samples`` a table of
    its own (a view still reading it, as version 7's ``clean_scores`` did), no
    ``sample_rows`` or ``item_texts``; ``meta`` records version 7 and older views."""
    con = duckdb.connect(str(path))
    try:
        kind = con.execute("SELECT table_type FROM information_schema.tables "
                           "WHERE table_name = 'samples'").fetchone()[0]
        if kind == "VIEW":
            samples_as_table(con)
        else:  # a row-by-row store's table (tests/test_store_bulk.py) has schema 9's query
            con.execute("ALTER TABLE samples DROP COLUMN IF EXISTS query")
        con.execute("CREATE OR REPLACE VIEW clean_scores AS SELECT cell_key, avg(score) AS score "
                    "FROM samples GROUP BY cell_key")
        con.execute("DROP TABLE sample_rows")
        con.execute("DROP TABLE item_texts")
        con.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
        con.execute("UPDATE meta SET value = 'version 7' WHERE key = 'views'")
    finally:
        con.close()


def as_version_8(path: Path) -> None:
    """Turn a current store into the layout schema version 8 wrote: ``item_texts`` without
    its ``query`` column (each item's decontamination query, where it had one, in every
    cell's ``extra``), and the samples view without it; ``meta`` records version 8."""
    con = duckdb.connect(str(path))
    try:
        rows = con.execute("SELECT r.rowid, t.query FROM sample_rows r "
                           "JOIN item_texts t USING (text_key) WHERE t.query IS NOT NULL").fetchall()
        for rowid, query in rows:
            con.execute("UPDATE sample_rows SET extra = json_merge_patch(extra, "
                        "json_object('decontamination_query', ?)) WHERE rowid = ?", [query, rowid])
        con.execute("CREATE OR REPLACE VIEW samples AS SELECT r.cell_key, r.item_index, "
                    "r.item_id, t.prompt, t.target, r.output, r.score, r.logprobs, r.extra, "
                    "r.min_k, r.min_k_plus FROM sample_rows r "
                    "LEFT JOIN item_texts t USING (text_key)")
        con.execute("ALTER TABLE item_texts DROP COLUMN query")
        con.execute("UPDATE meta SET value = '8' WHERE key = 'schema_version'")
        con.execute("UPDATE meta SET value = 'version 8' WHERE key = 'views'")
    finally:
        con.close()
