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
#: both, and ``lock_configuration`` stops a statement from switching them back on. DuckDB's
#: temporary folder (``<store>.tmp`` by default) is exempt from the file ban, so a query
#: could read and write files there: a read-only connection has none (it works in memory).
QUERY_CONFIG = {"enable_external_access": False, "temp_directory": "", "lock_configuration": True}


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
        if cursor is None:  # nothing but whitespace and comments
            raise UserError("query failed: no SQL statement given (the query is empty or "
                            "only comments)")
        if cursor.description is None:
            return [], []
        columns = [d[0] for d in cursor.description]
        return columns, cursor.fetchall()
    finally:
        con.close()


def export_parquet(path: Path, out: Path, timeout: float = 30.0) -> list[Path]:
    """Write every table and view of the store as ``<out>/<name>.parquet`` (DuckDB's own
    Parquet writer); returns the files. The store is opened read-only, and first: a bad
    store leaves no folder. Each file is written beside its name and renamed once all are
    written, so a failed export leaves no new file and no new folder."""
    import os

    import duckdb

    out = Path(out)
    con = connect(Path(path), read_only=True, timeout=timeout)
    made: list[Path] = []  # the folders this export creates, outermost first
    staged: list[Path] = []
    placed: list[Path] = []  # renamed into place: a later failure takes them back too
    done = False
    try:
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: is a file, not a folder (export writes one Parquet file "
                            "per table into a folder)")
        made = [folder for folder in (out, *out.parents) if not folder.exists()][::-1]
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{out}: cannot create the folder ({_reason(exc)})") from None
        if not os.access(out, os.W_OK | os.X_OK):
            raise UserError(f"{out}: cannot write the Parquet files (permission denied)")
        names = [row[0] for row in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'main' ORDER BY table_type, table_name").fetchall()]
        for name in names:
            staged.append(out / f".{name}.parquet.partial")
            con.sql(f'SELECT * FROM "{name}"').write_parquet(str(staged[-1]))  # a catalogue name
        files = [out / f"{name}.parquet" for name in names]
        for file, target in zip(staged, files):
            file.replace(target)
            placed.append(target)
        done = True
        return files
    except (duckdb.Error, OSError) as exc:
        raise UserError(f"{out}: cannot write the Parquet files ({_reason(exc)})") from None
    finally:
        con.close()
        if not done:
            for file in staged + placed:
                file.unlink(missing_ok=True)
            for folder in reversed(made):
                try:
                    folder.rmdir()
                except OSError:
                    pass  # not made after all, or not empty


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return first_line(exc)
