"""Opening the store: waiting while another process holds the DuckDB file, and the lock
that keeps a second run of the same store out (what may be a store and where:
:mod:`harness.store_location`).

DuckDB lets one process write a file and no other process open it meanwhile, so the
driver opens the store for each write and closes it again; ``harness sql`` slips in
between writes. Both sides retry while the other holds the file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import StoreLockedError, UserError, first_line
from harness.store_location import store_problem

#: on every connection the harness opens: DuckDB would otherwise fetch an extension from the
#: internet (into ~/.duckdb/extensions) and load it when a file or a statement needs one, as
#: opening a SQLite file does with ``sqlite_scanner``
NO_EXTENSIONS = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                 "allow_community_extensions": False}

def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "being used by another process" in text


def connect(path: Path, *, read_only: bool, timeout: float,
            config: dict[str, Any] | None = None) -> Any:
    """Open the store, waiting up to ``timeout`` seconds while another process holds it.
    What is not a store is one line before DuckDB sees it (DuckDB would try to open a
    SQLite file with an extension it fetches from the internet)."""
    import duckdb  # here, not at import: ``harness --help`` and plugins importing harness stay fast

    problem = store_problem(path, write=not read_only)
    if problem:
        raise UserError(f"{path}: {problem}")
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only,
                                  config={**NO_EXTENSIONS, **(config or {})})
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise UserError(f"{path}: cannot open store: {first_line(exc)}") from None
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
    """Hold the store for a whole run: one ``harness run`` per store at a time.

    The DuckDB file itself is opened only for each write, so that ``harness sql`` can
    read between them; this lock is what keeps a second run out. It is two locks, both
    released by the operating system if the process dies: ``<store>.lock`` (filelock's),
    taken first, and then an exclusive ``flock`` on the store file itself, so that a
    second path to the same file (a hard link) is the same store. A missing store is
    made (empty) under the first lock, to be locked too. The path is checked before
    anything is written: a bad store leaves no lock file. ``on_wait`` is called once if
    either lock is taken.
    """
    from filelock import FileLock, Timeout

    problem = store_problem(store_path, write=True)
    if problem:
        raise UserError(f"{store_path}: {problem}")
    try:
        store_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{store_path}: cannot create its folder: {exc.strerror or exc}") from None
    deadline = time.monotonic() + timeout
    waiting = []

    def wait() -> None:
        if on_wait is not None and not waiting:
            on_wait()
        waiting.append(True)

    def busy() -> StoreLockedError:
        return StoreLockedError(
            f"{store_path}: another harness run is using this store (still busy after "
            f"{timeout:.0f} s; HARNESS_LOCK_TIMEOUT sets the wait)")

    lock = FileLock(str(store_path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        wait()
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise busy() from None
    try:
        if not store_path.exists():  # an empty DuckDB file; the run's first write makes its tables
            store_path.parent.mkdir(parents=True, exist_ok=True)
            connect(store_path, read_only=False,
                    timeout=max(deadline - time.monotonic(), 1.0)).close()
        descriptor = _lock_file(store_path, deadline, wait)
        if descriptor == -1:
            raise busy()
        try:
            yield
        finally:
            if descriptor is not None:
                os.close(descriptor)  # releases the flock
    finally:
        lock.release()


def _lock_file(path: Path, deadline: float, wait: Any) -> int | None:
    """An open descriptor of ``path`` holding an exclusive ``flock`` (which follows the
    file, not the path, and is another lock than DuckDB's own ``fcntl`` locks, so readers
    still open the store); -1 when another process held it until ``deadline``; None where
    there is no ``flock`` (Windows, where DuckDB's own lock is exclusive)."""
    try:
        import fcntl
    except ImportError:
        return None
    descriptor = os.open(path, os.O_RDONLY)
    delay = 0.05
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return descriptor
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(descriptor)
                return -1
            wait()
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
