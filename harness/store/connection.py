"""Opening the store: waiting while another process holds the DuckDB file, and the lock
that keeps a second run of the same store out.

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

from harness.errors import StoreLockedError, UserError


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "being used by another process" in text


def connect(path: Path, *, read_only: bool, timeout: float,
            config: dict[str, Any] | None = None) -> Any:
    """Open the store, waiting up to ``timeout`` seconds while another process holds it."""
    import duckdb  # here, not at import: ``harness --help`` and plugins importing harness stay fast

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



