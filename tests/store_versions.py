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
       r.extra, r.min_k, r.min_k_plus
FROM sample_rows r LEFT JOIN item_texts t USING (text_key) ORDER BY r.rowid"""


def samples_as_table(con: duckdb.DuckDBPyConnection) -> None:
    """Replace the ``samples`` view by the table versions 1 to 7 had, holding the same rows
    in the same order; ``sample_rows`` and ``item_texts`` are left as they are."""
    con.execute(f"CREATE TEMP TABLE old_samples AS {SAMPLES_IN_ORDER}")
    con.execute("DROP VIEW samples")
    con.execute(SAMPLES_V7)
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
        con.execute("CREATE OR REPLACE VIEW clean_scores AS SELECT cell_key, avg(score) AS score "
                    "FROM samples GROUP BY cell_key")
        con.execute("DROP TABLE sample_rows")
        con.execute("DROP TABLE item_texts")
        con.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
        con.execute("UPDATE meta SET value = 'version 7' WHERE key = 'views'")
    finally:
        con.close()
