"""What may be a store and where: checks of a store's path (its name's length, what is
there, whether it can be written), made before anything is opened, locked or created, so
that a bad store leaves nothing behind. Below the suite and the store, which both check."""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: bytes 8-11 of every DuckDB database file; and the first 16 of every SQLite one
DUCKDB_MAGIC = b"DUCK"
SQLITE_MAGIC = b"SQLite format 3\x00"

#: what the harness and DuckDB put beside a store named ``<stem><suffix>``: the run lock and
#: DuckDB's write-ahead log and temporary folder (the whole name plus a suffix), the variants
#: folder (the stem plus one); the store's name must leave room for the longest
COMPANIONS = {".lock": "its lock file", ".wal": "its write-ahead log",
              ".tmp": "its temporary folder"}
VARIANTS_SUFFIX = ".variants"


def _existing_ancestor(path: Path) -> Path:
    for folder in path.parents:
        if os.path.lexists(folder):
            return folder
    return Path(path.anchor or "/")


def _limits(folder: Path) -> tuple[int, int]:
    """The longest file name and path the file system under ``folder`` allows."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no answer
        return 255, 4096


def store_name_problem(path: Path) -> str | None:
    """Why the file system cannot hold a store at ``path`` with everything beside it (a
    name or a path too long), or None."""
    path = Path(os.path.abspath(path))
    name_max, path_max = _limits(_existing_ancestor(path))
    for part in path.parts[1:-1]:
        if len(os.fsencode(part)) > name_max:
            return (f"the folder name {part} is {len(os.fsencode(part))} bytes long; the file "
                    f"system allows {name_max} bytes in a name")
    size = len(os.fsencode(path.name))
    extra = {what: len(suffix) for suffix, what in COMPANIONS.items()}
    extra["its variants folder"] = len(VARIANTS_SUFFIX) - len(path.suffix)
    what, longest = max(extra.items(), key=lambda item: item[1])
    if size + longest > name_max:
        return (f"the store's file name {path.name} is {size} bytes long, more than the "
                f"{name_max - longest} it may have (the file system allows {name_max} "
                f"bytes in a name, and {what} is named after it)")
    if len(os.fsencode(str(path))) + longest >= path_max:
        return f"the store's path is longer than the {path_max} bytes the file system allows"
    return None


def store_problem(path: Path, *, write: bool) -> str | None:
    """Why ``path`` cannot be opened as a store, or with ``write`` be written (created if
    missing, its lock file and write-ahead log beside it), or None. It only looks: nothing
    is created, so a bad store leaves no lock file and no folder behind."""
    path = Path(os.path.abspath(path))
    problem = store_name_problem(path)
    if problem:
        return problem
    try:
        info = path.stat()
    except FileNotFoundError:
        return _creatable(path.parent) if write else "no such store (run a suite first)"
    except OSError as exc:  # a symlink loop, a file where a folder should be, no permission
        return f"cannot use the store: {exc.strerror or exc}"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not a store file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a device, FIFO or socket), not a store file"
    if info.st_size == 0:
        return "is an empty file, not a DuckDB store"
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError as exc:
        return f"cannot read the store file ({(exc.strerror or str(exc)).lower()})"
    if head.startswith(SQLITE_MAGIC):
        return "is a SQLite database, not a DuckDB store"
    if head[8:12] != DUCKDB_MAGIC:
        return "is not a DuckDB store (the file has no DuckDB header)"
    if write and not os.access(path, os.R_OK | os.W_OK):
        return "cannot write the store file (permission denied)"
    if write and not os.access(path.parent, os.W_OK | os.X_OK):
        return (f"cannot write beside the store: the folder {path.parent} is not writable "
                "(its lock file and write-ahead log go there)")
    return None


def _creatable(folder: Path) -> str | None:
    """Why a store cannot be made in ``folder`` (created with its parents), or None."""
    for here in (folder, *folder.parents):
        try:
            info = here.stat()
        except FileNotFoundError:
            if here.is_symlink():  # mkdir would fail on it with "File exists"
                return f"cannot create the store: {here} is a symbolic link to nothing"
            continue
        except OSError as exc:
            return f"cannot create the store: {here}: {exc.strerror or exc}"
        if not stat.S_ISDIR(info.st_mode):
            return f"cannot create the store: {here} is not a folder"
        if not os.access(here, os.W_OK | os.X_OK):
            return f"cannot create the store: the folder {here} is not writable"
        return None
    return None
