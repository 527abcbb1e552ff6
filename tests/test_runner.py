"""The runner end to end on the tiny model: the CLI, the store, re-runs, resume, failures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from rich.console import Console

import harness
from harness_plugins.backends.hf import HFBackend
from harness.models import resolve_model
from harness.plugins import PluginHost
from harness.errors import UserError
from harness.plan import make_plan
from harness.runner import run_suite
from harness.store import query
from harness.suite import load_suite

from .conftest import small_suite, write_jsonl

pytestmark = pytest.mark.slow

COUNTS = ("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM variants), "
          "(SELECT count(*) FROM cells), (SELECT count(*) FROM metrics), "
          "(SELECT count(*) FROM samples)")


def _counts(store: Path) -> tuple:
    con = duckdb.connect(str(store), read_only=True)
    try:
        return con.execute(COUNTS).fetchone()
    finally:
        con.close()


def _harness(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd,
                          capture_output=True, text=True, env=os.environ.copy())


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_path):
    """One real run of the small suite through the CLI, in a subprocess."""
    root = tmp_path_factory.mktemp("e2e")
    suite = small_suite(root)
    done = _harness("run", str(suite), "--no-progress", cwd=root)
    assert done.returncode == 0, done.stderr + done.stdout
    return root, suite, root / "results" / "small.duckdb", done.stdout


def test_run_prints_base_and_variant_scores(finished):
    _, _, _, output = finished
    assert "Leaderboard" in output and "Forgetting" in output
    assert "lora-a" in output and "base" in output
    assert "4 cells, 0 already in the store, 4 done, 0 failed" in output


def test_run_stores_cells_metrics_samples_and_training_record(finished):
    _, _, store, _ = finished
    con = duckdb.connect(str(store), read_only=True)
    cells = con.execute("SELECT variant_name, evaluator, status, backend_path FROM cells "
                        "ORDER BY variant_name, evaluator").fetchall()
    assert cells == [("base", "mc", "done", "hf"), ("base", "text", "done", "hf"),
                     ("lora-a", "mc", "done", "hf"), ("lora-a", "text", "done", "hf")]
    metrics = {(r[0], r[1]) for r in con.execute(
        "SELECT c.evaluator, m.metric FROM metrics m JOIN cells c USING (cell_key)").fetchall()}
    assert {("mc", "acc"), ("mc", "acc_norm"), ("text", "perplexity"), ("text", "token_nll"),
            ("text", "bits_per_byte")} <= metrics
    samples = dict(con.execute(
        "SELECT c.evaluator, count(*) / 2 FROM samples s JOIN cells c USING (cell_key) "
        "GROUP BY 1").fetchall())
    assert samples == {"mc": 6, "text": 3}
    variant = con.execute(
        "SELECT status, method, kind, steps, len(loss_curve), trainable_params, total_params, "
        "seconds, train_tokens, peak_memory_mb, path FROM variants WHERE name = 'lora-a'"
    ).fetchone()
    con.close()
    status, method, kind, steps, curve, trainable, total, seconds, tokens, memory, path = variant
    assert (status, method, kind, steps, curve) == ("done", "lora", "adapter", 3, 3)
    assert 0 < trainable < total
    assert seconds > 0 and tokens > 0 and memory > 0
    assert (Path(path) / "adapter_model.safetensors").is_file()


def test_sql_command_reads_views_as_json_and_csv(finished):
    root, _, store, _ = finished
    out = _harness("sql", "SELECT variant, evaluator, forgetting FROM forgetting ORDER BY 2",
                   "--store", str(store), "--format", "json", cwd=root)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["variant"], r["evaluator"]) for r in rows] == [("lora-a", "mc"), ("lora-a", "text")]
    out = _harness("sql", "SELECT count(*) AS n FROM leaderboard", "--format", "csv", cwd=root)
    assert out.stdout.split() == ["n", "4"]  # store found under results/ by default
    out = _harness("sql", "DROP TABLE cells", "--store", str(store), cwd=root)
    assert out.returncode == 2 and "read-only" in out.stderr


def test_rerun_of_a_finished_suite_adds_no_rows(finished):
    root, suite, store, _ = finished
    before = _counts(store)
    again = _harness("run", str(suite), "--no-progress", cwd=root)
    assert again.returncode == 0, again.stderr
    assert "4 cells, 4 already in the store, 0 done, 0 failed" in again.stdout
    assert _counts(store) == before


def test_resume_recomputes_only_missing_cells_and_keeps_the_adapter(finished, tmp_path):
    root, _, store, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    copied_store = copy / "results" / "small.duckdb"
    con = duckdb.connect(str(copied_store))
    con.execute("DELETE FROM cells WHERE variant_name = 'lora-a' AND evaluator = 'text'")
    trained_before = con.execute("SELECT run_id, path FROM variants").fetchall()
    con.close()
    summary = run_suite(copy / "suite.toml", console=Console(file=open(os.devnull, "w")),
                        show_progress=False)
    assert (summary.cached, summary.done, summary.failed) == (3, 1, 0)
    con = duckdb.connect(str(copied_store), read_only=True)
    assert con.execute("SELECT run_id, path FROM variants").fetchall() == trained_before
    assert con.execute("SELECT count(*) FROM cells WHERE status = 'done'").fetchone() == (4,)
    con.close()


# -- keys -------------------------------------------------------------------------------


def _keys(suite_path: Path) -> dict[tuple[str, str], str]:
    host = PluginHost.load(entry_points=False)
    suite = load_suite(suite_path, host)
    models = [resolve_model(m, host, suite.base_dir) for m in suite.models]
    return {(c.variant.name, c.evaluator.name): c.key for c in make_plan(suite, models).cells}


def test_cell_keys_change_exactly_where_their_inputs_change(tmp_path, tiny_model_path):
    path = small_suite(tmp_path)
    first = _keys(path)
    assert len(first) == 4 and first == _keys(path)

    write_jsonl(tmp_path / "data" / "text.jsonl", [{"text": "A different text entirely."}])
    second = _keys(path)
    changed = {cell for cell in first if first[cell] != second[cell]}
    assert changed == {("base", "text"), ("lora-a", "text")}

    path.write_text(path.read_text().replace("steps = 3", "steps = 4"))
    third = _keys(path)
    changed = {cell for cell in second if second[cell] != third[cell]}
    assert changed == {("lora-a", "mc"), ("lora-a", "text")}


# -- failures and hooks -------------------------------------------------------------------


class Explode(harness.Evaluator):
    """An evaluator that always raises."""

    def evaluate(self, backend):
        raise RuntimeError("kaboom")


class Recorder:
    """Registers the exploding evaluator and records lifecycle hooks, reading the store
    from another process after every cell, as a user's second shell would."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.events: list[str] = []
        self.reads: list[int] = []

    @harness.hookimpl
    def harness_register_evaluators(self, register):
        register("explode", Explode)

    @harness.hookimpl
    def harness_run_started(self, run):
        self.events.append(f"run_started:{len(run.pending)}")

    @harness.hookimpl
    def harness_cell_started(self, cell):
        self.events.append(f"cell_started:{cell.evaluator.name}")

    @harness.hookimpl
    def harness_cell_finished(self, cell, outcome):
        self.events.append(f"cell_finished:{cell.evaluator.name}:{outcome.status}")
        out = _harness("sql", "SELECT count(*) AS n FROM cells", "--store", str(self.store),
                       "--format", "json", cwd=self.store.parent)
        assert out.returncode == 0, out.stderr
        self.reads.append(json.loads(out.stdout)[0]["n"])

    @harness.hookimpl
    def harness_run_finished(self, run, summary):
        self.events.append(f"run_finished:{summary.done}:{summary.failed}")


def test_failing_cell_is_recorded_others_go_on_and_hooks_fire(tmp_path, tiny_model_path):
    extra = '\n[[evaluators]]\nname = "boom"\nkind = "explode"\ndata = "data/mc.jsonl"\n'
    path = small_suite(tmp_path, tuners=False)
    path.write_text(path.read_text() + extra)
    store = tmp_path / "results" / "small.duckdb"
    recorder = Recorder(store)
    host = PluginHost.load(entry_points=False, extra_plugins=[recorder])
    summary = run_suite(path, host=host, console=Console(file=open(os.devnull, "w")),
                        show_progress=False)
    assert (summary.done, summary.failed) == (2, 1)
    assert recorder.events == [
        "run_started:3",
        "cell_started:mc", "cell_finished:mc:done",
        "cell_started:text", "cell_finished:text:done",
        "cell_started:boom", "cell_finished:boom:failed",
        "run_finished:2:1",
    ]
    assert recorder.reads == [1, 2, 3]  # another process read the store between cells
    con = duckdb.connect(str(store), read_only=True)
    error, trace = con.execute("SELECT error, traceback FROM cells WHERE status = 'failed'").fetchone()
    assert error == "RuntimeError: kaboom" and 'raise RuntimeError("kaboom")' in trace
    assert con.execute("SELECT status FROM runs").fetchone() == ("done_with_failures",)
    con.close()

    # a re-run retries the failed cell only
    summary = run_suite(path, host=host, console=Console(file=open(os.devnull, "w")),
                        show_progress=False)
    assert (summary.cached, summary.done, summary.failed) == (2, 0, 1)


def test_a_bad_training_row_stops_the_run_before_anything_is_written(tmp_path):
    path = small_suite(tmp_path)
    with (tmp_path / "data" / "sft.jsonl").open("a") as handle:
        handle.write('{"prompt": "only a prompt"}\n')
    done = subprocess.run([sys.executable, "-m", "harness", "run", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"harness: error: {path}: [[tuners]] #1 ('lora-a') field 'data': "
        f"{tmp_path / 'data' / 'sft.jsonl'}:17: a row needs 'messages', or both 'prompt' and "
        "'completion'")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists()  # nothing written, not even a lock


class BrokenTuner(harness.Tuner):
    """A tuner that fails at run time (after validation), halfway through writing."""

    def tune(self, job):
        (job.output_dir / "adapter").mkdir()
        (job.output_dir / "adapter" / "half.safetensors").write_bytes(b"half")
        raise RuntimeError("the GPU fell off")


class BrokenTunerPlugin:
    @harness.hookimpl
    def harness_register_tuners(self, register):
        register("broken", BrokenTuner)


def test_failed_tuning_fails_its_cells_and_leaves_nothing_half_written(tmp_path):
    path = small_suite(tmp_path)
    text = path.read_text().replace('method = "lora"', 'method = "broken"')
    path.write_text(text.replace("options = { r = 4, alpha = 8, steps = 3, lr = 1e-2, "
                                 "batch_size = 4, max_length = 64 }", ""))
    host = PluginHost.load(entry_points=False, extra_plugins=[BrokenTunerPlugin()])
    summary = run_suite(path, console=Console(file=open(os.devnull, "w")), show_progress=False,
                        host=host)
    assert (summary.done, summary.failed) == (2, 2)  # the base cells still ran
    con = duckdb.connect(str(tmp_path / "results" / "small.duckdb"), read_only=True)
    status, error = con.execute("SELECT status, error FROM variants").fetchone()
    assert (status, error) == ("failed", "tuning 'lora-a' failed: RuntimeError: the GPU fell off")
    errors = con.execute("SELECT DISTINCT error FROM cells WHERE status = 'failed'").fetchall()
    assert errors == [(error,)]
    con.close()
    assert not list((tmp_path / "results" / "small.variants").glob("*"))  # nothing half-written


# -- every kind of component from a plugin ------------------------------------------------

CALLS: dict[str, list] = {"load": [], "activate": [], "units": [], "reports": []}


class CountingBackend(HFBackend):
    """The real HF backend, counting how often a base is loaded and variants switched."""

    def load(self, model):
        CALLS["load"].append(model.name)
        super().load(model)

    def activate(self, variant):
        CALLS["activate"].append(variant.name)
        super().activate(variant)


class RecordingExecutor(harness.Executor):
    def run(self, units, work, emit):
        for unit in units:
            CALLS["units"].append([v.name for v in unit.variants])
            work(unit, emit)


class FolderSource(harness.ModelSource):
    def resolve(self, reference, *, base_dir, trust_remote_code):
        from harness_plugins.sources.builtin import builtin_model_path

        return builtin_model_path(reference)


class CsvReporter(harness.Reporter):
    def report(self, context):
        columns, rows = harness.query(context.store_path,
                              "SELECT variant, evaluator, value FROM leaderboard ORDER BY 1, 2")
        out = context.store_path.parent / "leaderboard.csv"
        out.write_text("\n".join(",".join(map(str, r)) for r in [columns, *rows]))
        CALLS["reports"].append(context.run_id)


class EveryKind:
    @harness.hookimpl
    def harness_register_backends(self, register):
        register("tests/counting-hf", CountingBackend)

    @harness.hookimpl
    def harness_register_executors(self, register):
        register("tests/recording", RecordingExecutor)

    @harness.hookimpl
    def harness_register_model_sources(self, register):
        register("tests/models", FolderSource)

    @harness.hookimpl
    def harness_register_reporters(self, register):
        register("tests/csv", CsvReporter)


def test_components_of_every_kind_come_from_plugins_and_the_base_loads_once(tmp_path,
                                                                             tiny_model_path):
    path = small_suite(tmp_path)
    text = path.read_text()
    text = text.replace('source = "builtin:tiny-random"', 'source = "tests/models:tiny-random"')
    text = text.replace('kind = "hf"', 'kind = "tests/counting-hf"')
    text = text.replace('seed = 0', 'seed = 0\nreporters = ["tests/csv"]')
    path.write_text(text + '\n[executor]\nkind = "tests/recording"\n')
    for calls in CALLS.values():
        calls.clear()
    host = PluginHost.load(entry_points=False, extra_plugins=[EveryKind()])
    summary = run_suite(path, host=host, console=Console(file=open(os.devnull, "w")),
                        show_progress=False)
    assert (summary.done, summary.failed) == (4, 0)
    assert CALLS["load"] == ["tiny"]                    # one base load for base and adapter
    assert CALLS["activate"] == ["base", "lora-a"]
    assert CALLS["units"] == [["base", "lora-a"]]
    assert CALLS["reports"] == [summary.run_id]
    lines = (tmp_path / "results" / "leaderboard.csv").read_text().splitlines()
    assert lines[0] == "variant,evaluator,value" and len(lines) == 5


class RaisingObserver:
    """An observer with a bug in one lifecycle hook."""

    @harness.hookimpl
    def harness_cell_finished(self, cell, outcome):
        raise KeyError("oops")


def test_a_raising_observer_is_named_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    path = small_suite(tmp_path, tuners=False)
    recorder = Recorder(tmp_path / "results" / "small.duckdb")
    host = PluginHost.load(entry_points=False, extra_plugins=[RaisingObserver(), recorder])
    summary = run_suite(path, host=host, console=Console(file=open(os.devnull, "w")),
                        show_progress=False)
    assert (summary.done, summary.failed) == (2, 0)
    assert "cell_finished:text:done" in recorder.events  # the other observer still heard it
    assert host.hook_errors == ["plugin 'RaisingObserver' raised in harness_cell_finished: "
                                "KeyError: 'oops'"] * 2
    assert "harness: warning: plugin 'RaisingObserver' raised in harness_cell_finished" in \
        capsys.readouterr().err

    # strict mode: the same bug stops the run with one clear error; stored cells stay
    strict = PluginHost.load(entry_points=False, extra_plugins=[RaisingObserver()], strict=True)
    path.write_text(path.read_text().replace('seed = 0', 'seed = 1'))
    with pytest.raises(UserError, match="plugin 'RaisingObserver' raised in harness_cell_finished"):
        run_suite(path, host=strict, console=Console(file=open(os.devnull, "w")),
                  show_progress=False)
    _, rows = query(tmp_path / "results" / "small.duckdb",
                    "SELECT count(*) FROM cells WHERE status = 'done'")
    assert rows == [(3,)]  # the two of the first run, and the one the strict run finished


def test_secrets_in_the_environment_never_reach_the_store(tmp_path, monkeypatch):
    secret = "hf_SECRET_7c1e9d0b2a4f"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    path = small_suite(tmp_path)
    run_suite(path, host=PluginHost.load(entry_points=False),
              console=Console(file=open(os.devnull, "w")), show_progress=False)
    results = tmp_path / "results"
    for file in results.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file


def test_a_child_of_a_failed_parent_fails_and_the_gate_cannot_pass_either(tmp_path):
    path = small_suite(tmp_path, extra="""
[[tuners]]
name = "child"
method = "lora"
from = "lora-a"
data = "data/sft.jsonl"
options = { r = 4, alpha = 8, steps = 1, batch_size = 4, max_length = 64 }
""")
    text = path.read_text().replace('method = "lora"', 'method = "broken"', 1)
    path.write_text(text.replace("options = { r = 4, alpha = 8, steps = 3, lr = 1e-2, "
                                 "batch_size = 4, max_length = 64 }", "", 1))
    host = PluginHost.load(entry_points=False, extra_plugins=[BrokenTunerPlugin()])
    summary = run_suite(path, console=Console(file=open(os.devnull, "w")), show_progress=False,
                        host=host)
    assert (summary.done, summary.failed) == (2, 4)
    con = duckdb.connect(str(tmp_path / "results" / "small.duckdb"), read_only=True)
    errors = dict(con.execute("SELECT name, error FROM variants").fetchall())
    assert errors["child"] == ("tuning 'child' failed: RuntimeError: its parent 'lora-a' "
                               "was not tuned")
    gate = con.execute("SELECT variant, evaluator, decision, reason FROM gate "
                       "ORDER BY variant, evaluator").fetchall()
    con.close()
    assert gate == [(name, evaluator, "INCONCLUSIVE",
                     "not scored: the cell or the base's failed, or has not run")
                    for name in ("child", "lora-a") for evaluator in ("mc", "text")]


class ExitingObserver:
    @harness.hookimpl
    def harness_cell_finished(self, cell, outcome):
        sys.exit(0)


def test_an_observer_calling_sys_exit_is_named_and_the_run_goes_on(tmp_path, capsys):
    """``sys.exit`` in a lifecycle hook is an observer's bug like any other: one warning
    line, the run finishes every cell."""
    path = small_suite(tmp_path, tuners=False)
    host = PluginHost.load(entry_points=False, extra_plugins=[ExitingObserver()])
    summary = run_suite(path, host=host, console=Console(file=open(os.devnull, "w")),
                        show_progress=False)
    assert (summary.done, summary.failed) == (2, 0)
    assert host.hook_errors == ["plugin 'ExitingObserver' raised in harness_cell_finished: "
                                "SystemExit: 0"] * 2
    assert "harness: warning: plugin 'ExitingObserver' raised" in capsys.readouterr().err
