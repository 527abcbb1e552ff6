"""Where a store may live, and what may be one: every bad store path is one line at
``validate`` (and again at ``run``) before anything is written, no lock file included; the
run lock follows the file, not the path; the read-only commands (``sql``, ``export``,
``report``) answer a bad store or a bad argument with one line."""

from __future__ import annotations

import ctypes
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.errors import StoreLockedError
from harness.store import Store, connect, query, run_lock

from .conftest import small_suite


def _suite(root: Path, store: str | None, name: str = "small") -> Path:
    """``small_suite`` with ``[suite] store`` set to ``store``, or left out (the default)."""
    path = small_suite(root, name=name, tuners=False)
    line = f'store = "results/{name}.duckdb"\n'
    path.write_text(path.read_text().replace(line, "" if store is None else f"store = {store!r}\n"))
    return path


def _files(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*")}


def _cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def _one_line_error(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("harness: error: "), result.stderr
    assert expected in lines[0], lines[0]


# -- 1. a store name the file system cannot hold ------------------------------------------


def test_a_suite_name_too_long_for_a_file_name_is_refused_before_anything_is_written(tmp_path):
    name = "x" * 300
    suite = _suite(tmp_path, None, name=name)
    before = _files(tmp_path)
    for command in ("validate", "run"):
        result = _cli(command, str(suite))
        _one_line_error(result, f"{suite}: [suite] field 'name': the store's file name "
                                f"{name}.duckdb is 307 bytes long")
        assert "choose a shorter [suite] name or set [suite] store" in result.stderr
    assert not (tmp_path / "results").exists()  # not even the folder
    assert _files(tmp_path) == before


def test_a_name_that_fits_but_leaves_no_room_for_the_lock_file_is_refused(tmp_path):
    """``<store>.lock`` and the variants folder ``<stem>.variants`` are the store's longest
    companions: a store name that fits alone but not with them is refused too."""
    suite = _suite(tmp_path, "results/" + "y" * 245 + ".duckdb")
    result = _cli("validate", str(suite))
    _one_line_error(result, f"{suite}: [suite] field 'store': the store's file name")
    assert "the file system allows 255 bytes in a name" in result.stderr


# -- 2. a folder the user cannot write ------------------------------------------------------


def _without_root_override() -> None:
    """Run the child as a user whom permission bits bind: as root, drop the capabilities
    that let root write any folder (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from the
    bounding set, so the child, after exec, holds them neither."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _harness_bound_by_permissions(*args: str, cwd: Path | None = None):
    try:
        return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                              text=True, preexec_fn=_without_root_override, cwd=cwd,
                              timeout=300)
    except subprocess.SubprocessError as exc:
        if "preexec_fn" in str(exc):  # a root without CAP_SETPCAP cannot give up its override
            pytest.skip(f"cannot drop root's permission override here: {exc}")
        raise


def test_the_capability_drop_really_binds_the_child(tmp_path):
    """The check the tests below rely on: the child cannot write a chmod 500 folder."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    done = subprocess.run([sys.executable, "-c", f"open({str(locked / 'x')!r}, 'w')"],
                          capture_output=True, text=True, preexec_fn=_without_root_override)
    assert done.returncode == 1 and "PermissionError" in done.stderr
    assert not (locked / "x").exists()


@pytest.mark.parametrize("store", ["locked/s.duckdb", "locked/deeper/s.duckdb"])
def test_a_store_in_a_folder_the_user_cannot_write_is_one_line_in_validate_and_run(
        tmp_path, store):
    suite = _suite(tmp_path, store)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        for command in ("validate", "run"):
            done = _harness_bound_by_permissions(command, str(suite))
            assert done.returncode == 2, done.stderr
            assert done.stderr.splitlines() == [
                f"harness: error: {suite}: [suite] field 'store': {tmp_path / store}: cannot "
                f"create the store: the folder {locked} is not writable"], done.stderr
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_a_store_file_the_user_cannot_write_is_one_line(tmp_path):
    suite = _suite(tmp_path, "results/small.duckdb")
    Store(tmp_path / "results" / "small.duckdb").initialise()
    (tmp_path / "results" / "small.duckdb").chmod(0o400)
    done = _harness_bound_by_permissions("validate", str(suite))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"harness: error: {suite}: [suite] field 'store': {tmp_path / 'results/small.duckdb'}: "
        "cannot write the store file (permission denied)"]


# -- 3. and 4. what is not a store: checked before any lock file -----------------------------


def _not_a_store(tmp_path: Path, kind: str) -> tuple[str, str]:
    """(the [suite] store value, the expected problem) for one kind of thing that is no store."""
    if kind == "folder":
        (tmp_path / "folder").mkdir()
        return "folder", "is a folder, not a store file"
    if kind == "dot":
        return ".", "is a folder, not a store file"
    if kind == "dev-null":
        return "/dev/null", "is not a regular file"
    if kind == "text":
        (tmp_path / "text.duckdb").write_text("not a database\n" * 4)
        return "text.duckdb", "is not a DuckDB store"
    if kind == "below-a-file":
        (tmp_path / "file").write_text("x")
        return "file/s.duckdb", "cannot use the store: Not a directory"
    if kind == "symlink-loop":
        (tmp_path / "loop.duckdb").symlink_to("loop.duckdb")
        return "loop.duckdb", "cannot use the store: "  # "Symlink loop", "Too many levels..."
    if kind == "empty":
        (tmp_path / "empty.duckdb").write_bytes(b"")
        return "empty.duckdb", "is an empty file, not a DuckDB store"
    con = sqlite3.connect(tmp_path / "lite.duckdb")
    con.execute("CREATE TABLE t (a)")
    con.commit()
    con.close()
    return "lite.duckdb", "is a SQLite database, not a DuckDB store"


KINDS = ["folder", "dot", "dev-null", "text", "empty", "sqlite", "below-a-file", "symlink-loop"]


@pytest.mark.parametrize("kind", KINDS)
def test_what_is_not_a_store_is_refused_and_no_lock_file_is_written(tmp_path, kind):
    home = tmp_path / "home"
    home.mkdir()
    root = tmp_path / "suite"
    root.mkdir()
    store, problem = _not_a_store(root, kind)
    suite = _suite(root, store)
    before = _files(tmp_path)
    for command in ("validate", "run"):
        result = _cli(command, str(suite), env={"HOME": str(home)})
        _one_line_error(result, f"{suite}: [suite] field 'store': ")
        assert problem in result.stderr
    assert _files(tmp_path) == before  # no <store>.lock, no ~/.duckdb/extensions
    assert not Path("/dev/null.lock").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_sql_export_and_report_on_what_is_not_a_store_are_one_line(tmp_path, kind):
    home = tmp_path / "home"
    home.mkdir()
    store, problem = _not_a_store(tmp_path, kind)
    store = store if store.startswith("/") else str(tmp_path / store)
    before = _files(tmp_path)
    commands = [("sql", "--store", store, "SELECT 1"),
                ("export", "--store", store, "--out", str(tmp_path / "out"))]
    if store.endswith(".duckdb"):  # report takes any other path for a suite file
        commands.append(("report", store))
    for args in commands:
        result = _cli(*args, env={"HOME": str(home)})
        _one_line_error(result, problem)
    assert _files(tmp_path) == before


def test_every_connection_refuses_to_load_or_install_extensions(tmp_path):
    """DuckDB would otherwise fetch an extension from the internet when a file or a query
    needs one (a SQLite file, a parquet URL): every connection the harness opens has
    autoloading and autoinstalling off."""
    store = Store(tmp_path / "s.duckdb")
    store.initialise()
    wanted = ("autoinstall_known_extensions", "autoload_known_extensions",
              "allow_community_extensions")
    sql = "SELECT " + ", ".join(f"current_setting('{name}')" for name in wanted)
    assert query(store.path, sql)[1] == [(False, False, False)]
    for read_only in (True, False):
        con = connect(store.path, read_only=read_only, timeout=5)
        try:
            assert con.execute(sql).fetchall() == [(False, False, False)]
        finally:
            con.close()


# -- 6. the lock follows the file ------------------------------------------------------------


def _hold_run_lock(path: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from harness.store import run_lock
        with run_lock(Path({str(path)!r}), timeout=5):
            print("locked", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.parametrize("exists", [True, False], ids=["store-exists", "store-made-by-run"])
def test_a_second_run_through_a_hard_link_waits_for_the_first(tmp_path, exists):
    """Two paths to one file are one store: a run through the second waits for the run
    through the first, whether the store existed before the first run or not."""
    first = tmp_path / "a" / "s.duckdb"
    if exists:
        Store(first).initialise()
    holder = _hold_run_lock(first)
    try:
        (tmp_path / "b").mkdir()
        second = tmp_path / "b" / "s.duckdb"
        os.link(first, second)
        waited = []
        started = time.monotonic()
        with pytest.raises(StoreLockedError, match="another harness run is using this store"):
            with run_lock(second, timeout=0.5, on_wait=lambda: waited.append(1)):
                pytest.fail("two runs hold one store")
        assert waited == [1] and time.monotonic() - started >= 0.5
    finally:
        holder.kill()
        holder.wait()
    with run_lock(second, timeout=5):  # free again once the first has gone
        pass


def test_a_run_made_store_is_a_valid_empty_store(tmp_path):
    """The run lock makes a missing store (so that a hard link to it is locked too): an
    empty DuckDB file that every later open brings up to date."""
    path = tmp_path / "new" / "s.duckdb"
    with run_lock(path, timeout=5):
        assert path.is_file()
    store = Store(path)
    store.ensure_current()
    assert query(path, "SELECT count(*) FROM cells")[1] == [(0,)]


# -- 7. to 10. the read-only commands -------------------------------------------------------


@pytest.fixture()
def store(tmp_path) -> Path:
    store = Store(tmp_path / "s.duckdb")
    store.initialise()
    return store.path


@pytest.mark.parametrize("statement", ["", "   ", "-- only a comment", "/* a comment */ ;"])
def test_sql_with_no_statement_is_one_line(store, statement):
    result = _cli("sql", "--store", str(store), "--", statement)
    _one_line_error(result, "query failed: no SQL statement given")


def test_export_to_an_existing_file_is_one_line(store, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    result = _cli("export", "--store", str(store), "--out", str(out))
    _one_line_error(result, f"{out}: is a file, not a folder")
    assert out.read_text() == "keep me"


def test_export_below_a_file_is_one_line(store, tmp_path):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub"
    result = _cli("export", "--store", str(store), "--out", str(out))
    _one_line_error(result, f"{out}: cannot create the folder")


def test_export_to_a_folder_the_user_cannot_write_is_one_line_and_writes_nothing(store, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        done = _harness_bound_by_permissions("export", "--store", str(store), "--out",
                                             str(locked / "out"))
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith(f"harness: error: {locked / 'out'}: cannot create the folder")
        done = _harness_bound_by_permissions("export", "--store", str(store), "--out", str(locked))
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith(f"harness: error: {locked}: cannot write")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("bad", ["missing.duckdb", "text.duckdb"])
def test_export_of_a_bad_store_leaves_no_out_folder(tmp_path, bad):
    (tmp_path / "text.duckdb").write_text("not a store\n")
    out = tmp_path / "out"
    result = _cli("export", "--store", str(tmp_path / bad), "--out", str(out))
    _one_line_error(result, str(tmp_path / bad))
    assert not out.exists()


def test_export_still_writes_every_table(store, tmp_path):
    result = _cli("export", "--store", str(store), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "cells.parquet").is_file()


def test_report_on_a_store_with_no_runs_says_so(store, tmp_path):
    result = _cli("report", str(store))
    _one_line_error(result, f"{store}: holds no runs yet (run a suite into it first)")
    suite = _suite(tmp_path, "s.duckdb")
    result = _cli("report", str(suite))
    _one_line_error(result, f"{store}: holds no runs yet (run a suite into it first)")
    assert not list(tmp_path.glob("*.report.*"))
    result = _cli("gate", str(store))
    _one_line_error(result, f"{store}: holds no runs yet (run a suite into it first)")


def test_sql_prints_the_store_path_whole_on_one_line(tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "store-with-a-long-name.duckdb"
    Store(deep).initialise()
    result = _cli("sql", "--store", str(deep), "SELECT 1 AS one")
    assert result.exit_code == 0, result.output
    assert str(deep) in result.stdout.splitlines()
    assert "one" in result.stdout

