"""Reading a store from outside the run: sandboxed read-only queries and Parquet export.
These are the helpers plugins use (``harness.query``, ``harness.read_store``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import UserError, first_line
from harness.store.connection import connect

#: what a user's query may not do: write (the connection is read-only), or reach outside the
#: store: ATTACH, COPY TO, reading or writing files, installing extensions. DuckDB enforces
#: both, and ``lock_configuration`` stops a statement from switching them back on.
QUERY_CONFIG = {"enable_external_access": False, "lock_configuration": True}


@contextmanager
def read_store(path: Path, timeout: float = 30.0) -> Iterator[Any]:
    """A read-only, sandboxed DuckDB connection to the store, for several queries in a row
    (a report); closed when the block ends. Waits while a run holds the file."""
    con = connect(Path(path), read_only=True, timeout=timeout, config=QUERY_CONFIG)
    try:
        yield con
    finally:
        con.close()


def query(path: Path, sql: str, params: Sequence[Any] = (),
          timeout: float = 30.0) -> tuple[list[str], list[tuple]]:
    """Run one statement on a read-only, sandboxed connection; return columns and rows."""
    import duckdb

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
