"""Every ``except`` in the core package, reached by the situation it is there for, with what
the user then sees: one line and exit status 2 on the command line, a ``UserError`` or a
failed cell otherwise. Situations are made for real where Linux allows it (an unreadable
file, a suite that is not UTF-8, a store folder that is a dangling link, a store held by
another process); a module or a system call is replaced only where the situation cannot be
made here."""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import harness
from harness.cli import main
from harness.errors import DataError, UserError
from harness.plugins import PluginHost

from .conftest import TEXT_ROWS, write_jsonl
from .test_store_paths import _without_root_override


def _duckdb_file(path: Path, *tables: str) -> Path:
    """A DuckDB file holding one empty table per name."""
    import duckdb

    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    for table in tables:
        con.execute(f"CREATE TABLE {table} (x INTEGER)")
    con.close()
    return path


def _python_bound_by_permissions(code: str) -> subprocess.CompletedProcess:
    """``code`` run by a Python child whom permission bits bind (as root, without root's
    override; see test_store_paths)."""
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              preexec_fn=_without_root_override, timeout=300)
    except subprocess.SubprocessError as exc:
        if "preexec_fn" in str(exc):  # a root without CAP_SETPCAP cannot give up its override
            pytest.skip(f"cannot drop root's permission override here: {exc}")
        raise


def _one_line_error(result, line: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr == f"harness: error: {line}\n"


# -- harness/cli.py: Ctrl-C in a command other than `run` ----------------------------------


def test_ctrl_c_while_sql_waits_for_a_held_store_is_one_line_and_exit_130(tmp_path):
    store = _duckdb_file(tmp_path / "s.duckdb", "t")
    # another process holds the store for writing, as a run does while it writes
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, time\n"
                               f"con = duckdb.connect({str(store)!r})\n"
                               "print('held', flush=True)\ntime.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        waiting = subprocess.Popen([sys.executable, "-m", "harness", "sql", "--store",
                                    str(store), "SELECT 1"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # DuckDB is imported inside the command, just before it tries the store: once
            # its library is mapped, the command is running (and retrying for 30 s)
            maps = Path(f"/proc/{waiting.pid}/maps")
            deadline = time.monotonic() + 60
            while "duckdb" not in maps.read_text() and time.monotonic() < deadline:
                assert waiting.poll() is None, waiting.communicate()
                time.sleep(0.05)
            time.sleep(0.5)  # into its retries (a Ctrl-C is caught anywhere in the command)
            waiting.send_signal(signal.SIGINT)
            out, err = waiting.communicate(timeout=60)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
    finally:
        holder.kill()
        holder.wait()
    assert (waiting.returncode, out, err) == (130, "", "harness: interrupted\n")


# -- harness/data.py: a regular file whose read fails --------------------------------------


def test_data_whose_read_fails_is_named_with_the_reason():
    # /proc/self/mem is a regular file that opens, but reading at offset 0 is an I/O error
    from harness.data import DataRow, read_jsonl

    with pytest.raises(DataError) as caught:
        read_jsonl("/proc/self/mem", DataRow)
    assert str(caught.value) == "/proc/self/mem: cannot read: Input/output error"


# -- harness/experiment.py: a plugin's planned_steps that cannot take the probe ------------


class ChunkedOptions(harness.Options):
    steps: int | None = None
    chunk: int = 64


class ChunkedTuner(harness.Tuner):
    """Counts its steps only when ``steps`` is set, and takes only whole chunks of them."""

    Options = ChunkedOptions

    @classmethod
    def planned_steps(cls, options: ChunkedOptions, rows: int) -> int | None:
        if options.steps is None:
            return None
        if options.steps % options.chunk:
            raise ValueError(f"steps must be a multiple of {options.chunk}")
        return options.steps

    def tune(self, job):
        raise RuntimeError("never run in these tests")


class ChunkedPlugin:
    @staticmethod
    @harness.hookimpl
    def harness_register_tuners(register):
        register("acme/chunked", ChunkedTuner)


def test_eval_every_on_a_plugin_tuner_whose_planned_steps_refuses_the_probe(tmp_path):
    from harness.suite import load_suite

    write_jsonl(tmp_path / "data" / "text.jsonl", TEXT_ROWS)
    suite = tmp_path / "suite.toml"
    suite.write_text("""
[suite]
name = "chunked"

[[models]]
name = "tiny"
source = "builtin:tiny-random"

[[tuners]]
name = "chunked"
method = "acme/chunked"
data = "data/text.jsonl"
eval_every = 2

[[evaluators]]
name = "text"
kind = "perplexity"
data = "data/text.jsonl"
""", encoding="utf-8")
    host = PluginHost.load(entry_points=False, extra_plugins=[ChunkedPlugin])
    with pytest.raises(UserError) as caught:
        load_suite(suite, host)
    # no "; set options.steps": the tuner would not count steps with steps = 100 either
    assert caught.value.lines == [
        f"{suite}: [[tuners]] #1 ('chunked') field 'eval_every': the tuner 'acme/chunked' "
        "cannot keep checkpoints with these options (it does not say beforehand how many "
        "steps it takes)"]


# -- harness/store/connection.py -----------------------------------------------------------


def test_a_lock_timeout_that_is_not_a_number_is_one_line(tmp_path):
    store = _duckdb_file(tmp_path / "s.duckdb", "t")
    result = CliRunner().invoke(main, ["report", str(store)],
                                env={"HARNESS_LOCK_TIMEOUT": "soon"})
    _one_line_error(result, "HARNESS_LOCK_TIMEOUT='soon': expected a number of seconds")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.duckdb"]  # no report written


def test_a_store_whose_folder_is_a_dangling_link_is_one_line_and_writes_nothing(tmp_path):
    """Checked before the lock (mkdir would fail on the link with a bare "File exists").
    A suite resolves its store's path first, so there the link's target is made."""
    from harness.store import run_lock

    (tmp_path / "results").symlink_to(tmp_path / "unmounted" / "results")
    store = tmp_path / "results" / "s.duckdb"
    with pytest.raises(UserError) as caught:
        with run_lock(store, timeout=1):
            pytest.fail("the lock was taken")
    assert str(caught.value) == (f"{store}: cannot create the store: {tmp_path / 'results'} "
                                 "is a symbolic link to nothing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # the link alone


def test_a_store_folder_that_cannot_be_made_when_the_run_starts_is_one_line(tmp_path,
                                                                            monkeypatch):
    """Checked, then made: a folder that fails to be made in between (a full disk, a
    folder made read-only meanwhile) is one line too, and no lock file is written."""
    from harness.store import run_lock

    def no_space(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    store = tmp_path / "results" / "s.duckdb"
    monkeypatch.setattr(Path, "mkdir", no_space)
    with pytest.raises(UserError) as caught:
        with run_lock(store, timeout=1):
            pytest.fail("the lock was taken")
    assert str(caught.value) == f"{store}: cannot create its folder: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_without_fcntl_the_run_lock_is_the_lock_file_alone(tmp_path, monkeypatch):
    """Where there is no ``fcntl`` (Windows) the store file gets no ``flock``: the run
    still takes ``<store>.lock`` and makes the store."""
    import filelock  # noqa: F401  (loaded first: it picks its own lock kind on import)

    from harness.store import run_lock
    from harness.store.connection import _lock_file

    store = tmp_path / "s.duckdb"
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError
    with run_lock(store, timeout=1):
        assert store.stat().st_size > 0  # made under the lock, a DuckDB file
        assert _lock_file(store, time.monotonic() + 1, lambda: None) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.duckdb", "s.duckdb.lock"]


# -- harness/store/reader.py: an export that fails while writing ---------------------------


def test_an_export_that_fails_while_writing_is_one_line_and_leaves_no_new_file(tmp_path):
    store = _duckdb_file(tmp_path / "s.duckdb", "a", "b")
    out = tmp_path / "out"
    (out / "b.parquet").mkdir(parents=True)  # in the way of the second file
    result = CliRunner().invoke(main, ["export", "--store", str(store), "--out", str(out)])
    _one_line_error(result, f"{out}: cannot write the Parquet files (is a directory)")
    assert [p.name for p in out.iterdir()] == ["b.parquet"]  # a.parquet taken back too
    assert list((out / "b.parquet").iterdir()) == []


# -- harness/store_location.py -------------------------------------------------------------


def test_a_store_name_too_long_below_a_dangling_link_is_still_refused(tmp_path):
    # the folder the name is measured in is a link to nothing: pathconf has no answer, so
    # the usual limits (255 bytes a name) apply
    (tmp_path / "results").symlink_to(tmp_path / "unmounted")
    name = "y" * 300 + ".duckdb"
    suite = tmp_path / "suite.toml"
    suite.write_text(f'[suite]\nname = "long"\nstore = "results/{name}"\n\n[[models]]\n'
                     'name = "tiny"\nsource = "builtin:tiny-random"\n\n[[evaluators]]\n'
                     'name = "text"\nkind = "perplexity"\ndata = "data/text.jsonl"\n',
                     encoding="utf-8")
    write_jsonl(tmp_path / "data" / "text.jsonl", TEXT_ROWS)
    result = CliRunner().invoke(main, ["validate", str(suite)])
    _one_line_error(result, f"{suite}: [suite] field 'store': the store's file name {name} is "
                            "307 bytes long, more than the 250 it may have (the file system "
                            "allows 255 bytes in a name, and its lock file is named after it)")


def test_a_store_file_the_user_cannot_read_is_one_line_from_query(tmp_path):
    # through harness.query, as a plugin reads a store (the CLI's own path check refuses an
    # unreadable file before the harness looks at it)
    store = _duckdb_file(tmp_path / "s.duckdb", "t")
    store.chmod(0)
    done = _python_bound_by_permissions(
        "import harness\n"
        "try:\n"
        f"    harness.query({str(store)!r}, 'SELECT 1')\n"
        "except harness.UserError as exc:\n"
        "    print(exc)\n")
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"{store}: cannot read the store file (permission denied)\n", "")


def test_a_store_folder_that_cannot_be_looked_at_when_made_is_one_line(tmp_path, monkeypatch):
    """The store is missing and the folder above it cannot be looked at. Only a change
    between the two looks (a folder whose permissions change meanwhile) makes this on
    Linux, where looking at the store would fail the same way first; the second look is
    made to fail here."""
    from harness.store_location import store_problem

    store = tmp_path / "results" / "s.duckdb"
    real_stat = pathlib.Path.stat

    def stat(self, **kwargs):
        if self == tmp_path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_stat(self, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    assert store_problem(store, write=True) == \
        f"cannot create the store: {tmp_path}: Permission denied"
    assert list(tmp_path.iterdir()) == []


# -- harness/suite_file.py: a suite file that cannot be read as text ------------------------


def test_a_suite_file_that_is_not_utf8_names_the_byte(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_bytes('# r\xe9sum\xe9\n[suite]\nname = "latin"\n'.encode("latin-1"))
    result = CliRunner().invoke(main, ["validate", str(suite)])
    _one_line_error(result, f"{suite}: not valid UTF-8 (byte 3)")


def test_a_suite_file_whose_read_fails_is_one_line():
    # /proc/self/mem is a regular file that opens, but reading at offset 0 is an I/O error;
    # the suite is named by its real path
    result = CliRunner().invoke(main, ["validate", "/proc/self/mem"])
    _one_line_error(result, f"/proc/{os.getpid()}/mem: cannot read: Input/output error")


# -- harness/worker.py: a backend that fails to load or to activate ------------------------


class StubSource(harness.ModelSource):
    """``stub:NAME``: an empty model folder."""

    def resolve(self, reference: str, *, base_dir: Path, trust_remote_code: bool) -> Path:
        folder = base_dir / "stub-models" / reference
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.json").write_text("{}", encoding="utf-8")
        return folder


class StubBackend(harness.Backend):
    """Scores every byte at -1 nat; the model "exits" calls sys.exit(3) when loaded, the
    model "lost" raises when activated."""

    def load(self, model: harness.ResolvedModel) -> None:
        self.model = model.name
        if model.name == "exits":
            sys.exit(3)

    def activate(self, variant: harness.Variant) -> None:
        if self.model == "lost":
            raise FileNotFoundError("its weights are gone")

    def score_texts(self, texts, stride=None):
        return [harness.TokenScores(list(t.encode()), [-1.0] * len(t.encode()),
                                    len(t.encode())) for t in texts]

    def generate(self, prompts, max_new_tokens, stop=()):
        return ["" for _ in prompts]


class StubPlugin:
    @staticmethod
    @harness.hookimpl
    def harness_register_model_sources(register):
        register("stub", StubSource)

    @staticmethod
    @harness.hookimpl
    def harness_register_backends(register):
        register("stub", StubBackend)


def _stub_suite(folder: Path, broken: str) -> str:
    write_jsonl(folder / "data" / "text.jsonl", TEXT_ROWS)
    return f"""
[suite]
name = "stub"

[[models]]
name = "{broken}"
source = "stub:{broken}"

[[models]]
name = "fine"
source = "stub:fine"

[[evaluators]]
name = "text"
kind = "perplexity"
data = "data/text.jsonl"

[backend]
kind = "stub"
"""


@pytest.mark.parametrize("broken, error", [
    ("exits", "loading 'exits' failed: the backend called sys.exit(3): a plugin fails a cell "
              "by raising, not by ending the process"),
    ("lost", "activating 'base' failed: FileNotFoundError: its weights are gone"),
])
def test_a_backend_that_fails_to_load_or_activate_fails_only_its_models_cells(
        run_harness, tmp_path, broken, error):
    run = run_harness(_stub_suite(tmp_path, broken), plugins=[StubPlugin], entry_points=False)
    assert (run.summary.planned, run.summary.done, run.summary.failed) == (2, 1, 1)
    assert sorted(run.query("SELECT model_name, status, error FROM cells")) == sorted([
        (broken, "failed", error), ("fine", "done", None)])
    [(status,)] = run.query("SELECT status FROM runs")
    assert status == "done_with_failures"


def test_a_suite_file_the_user_cannot_read_is_the_harness_one_line(tmp_path):
    """click would refuse an unreadable path itself, with its usage text; the harness
    says it in its own one line."""
    suite = tmp_path / "suite.toml"
    suite.write_text("[suite]\nname = 'x'\n")
    suite.chmod(0)
    done = _python_bound_by_permissions(
        "import sys\nfrom harness.cli import main\n"
        f"sys.argv = ['harness', 'validate', {str(suite)!r}]\nmain()")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"harness: error: {suite}: cannot read: Permission denied"


def test_run_names_a_bad_lock_timeout_before_it_resolves_any_model(tmp_path):
    """A bad ``HARNESS_LOCK_TIMEOUT`` is said first, not after the models were fetched (a
    download of minutes): here a model that cannot be found would speak otherwise."""
    from .conftest import small_suite

    suite = small_suite(tmp_path, tuners=False)
    suite.write_text(suite.read_text().replace('"builtin:tiny-random"',
                                               f'"local:{tmp_path / "no-such-model"}"'))
    result = CliRunner().invoke(main, ["run", str(suite)], env={"HARNESS_LOCK_TIMEOUT": "soon"})
    _one_line_error(result, "HARNESS_LOCK_TIMEOUT='soon': expected a number of seconds")
