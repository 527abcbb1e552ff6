"""The store's bulk path: rows of many (samples, findings, metrics) go to DuckDB as one
Arrow table per write, inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from harness.store.rows import TABLE_OF, columns
from harness.store.schema import TEXT_KEY

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

def extras_as_json(extras: Sequence[dict[str, Any]]) -> list[str]:
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


def insert(con: Any, table: str, names: Sequence[str], data: Sequence[Sequence[Any]]) -> None:
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


def insert_samples(con: Any, data: Sequence[Sequence[Any]]) -> None:
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
    con.register("harness_bulk_rows", arrow)  # see insert on an error
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


def insert_rows(con: Any, row_type: type, rows: Sequence[Any]) -> None:
    """Insert typed rows (:mod:`harness.store.rows`) into their table, column by column."""
    names = columns(row_type)
    insert(con, TABLE_OF[row_type], names, [list(map(attrgetter(n), rows)) for n in names])
