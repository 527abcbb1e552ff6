"""What a plugin evaluator hands back is checked: a bad result, or a plugin that exits the
process, fails its own cell with one line naming the evaluator and the fault; the other
cells run and the run's exit status says cells failed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from harness.plugins import PluginHost
from harness.runner import run_suite
from harness.store import query

from .conftest import TEXT_ROWS, write_jsonl

pytestmark = pytest.mark.slow

#: a third-party evaluator with a switch for each fault, installed as a distribution
FAULTY_PLUGIN = '''
import math
import os
import sys
import time
from pathlib import Path

import harness
from harness import Alert, EvalResult, Metric, Sample


class FaultyOptions(harness.Options):
    fault: str = "none"


#: sample field -> a value of the wrong type, by fault name
WRONG_SAMPLE_FIELD = {
    "sample-index": ("index", "1"),
    "sample-score": ("score", "0.5"),
    "sample-logprobs": ("logprobs", [-0.5, "x"]),
    "sample-logprobs-number": ("logprobs", -0.5),
    "sample-query": ("query", 7),
    "sample-extra": ("extra", ["a"]),
}


class Faulty(harness.Evaluator):
    Options = FaultyOptions

    def evaluate(self, backend):
        fault = self.options.fault
        metrics = [Metric("acc", 0.5, n=2, primary=True), Metric("loss", 1.0, n=2)]
        samples = [Sample(0, item_id="a", score=1.0, logprobs=[-0.1, -2.0]),
                   Sample(1, item_id="b", score=0.0, query="what?")]
        if fault == "exit":
            sys.exit(0)
        if fault == "slow":  # a long cell: the test interrupts it
            Path(os.environ["FAULTY_STARTED"]).touch()
            time.sleep(120)
        if fault == "dict-metric":
            metrics = [{"name": "acc", "value": 0.5}]
        elif fault == "text-value":
            metrics = [Metric("acc", "high", primary=True)]
        elif fault == "two-primaries":
            metrics[1].primary = True
        elif fault == "same-name":
            metrics[1].name = "acc"
        elif fault == "nan-primary":
            metrics[0].value = math.nan
        elif fault == "nan-other":  # allowed: a rate over no items, say
            metrics[1].value = math.nan
        elif fault == "same-index":
            samples[1].index = 0
        elif fault == "alert-value":
            return EvalResult(metrics, samples, alerts=[Alert("loss", "big", 0.5, "too big")])
        elif fault == "long-notes":  # a warning and an alert longer than any console line
            return EvalResult(metrics, samples, alerts=[Alert("loss", 1.0, 0.5, "[b]" + "a" * 300)],
                              info={"warning": "[red]" + "w" * 300})
        elif fault in WRONG_SAMPLE_FIELD:
            name, value = WRONG_SAMPLE_FIELD[fault]
            setattr(samples[1], name, value)
        return EvalResult(metrics, samples)


@harness.hookimpl
def harness_register_evaluators(register):
    register("faulty", Faulty)
'''


def install_plugin(root: Path, name: str = "faulty_plugin", source: str = FAULTY_PLUGIN) -> Path:
    """``source`` as module ``name`` of an installed distribution (a dist-info with an entry
    point of group ``harness``) in ``root/site``; returns the folder to put on the path."""
    site = root / "site"
    (site / f"{name}-0.1.dist-info").mkdir(parents=True)
    (site / f"{name}.py").write_text(source, encoding="utf-8")
    (site / f"{name}-0.1.dist-info" / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n", encoding="utf-8")
    (site / f"{name}-0.1.dist-info" / "entry_points.txt").write_text(
        f"[harness]\n{name} = {name}\n", encoding="utf-8")
    return site


def plugin_env(site: Path, **extra: str) -> dict[str, str]:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def faulty_suite(root: Path, faults: list[str], *, tuner: str = "") -> Path:
    """The tiny model's base, one faulty evaluator entry per fault, then perplexity."""
    write_jsonl(root / "data" / "text.jsonl", TEXT_ROWS)
    entries = "".join(
        f'\n[[evaluators]]\nname = "{fault}"\nkind = "faulty"\ndata = "data/text.jsonl"\n'
        f'options = {{ fault = "{fault}" }}\n' for fault in faults)
    path = root / "suite.toml"
    path.write_text(f"""
[suite]
name = "faulty"
store = "results/faulty.duckdb"
seed = 0

[[models]]
name = "tiny"
source = "builtin:tiny-random"
{tuner}{entries}
[[evaluators]]
name = "text"
kind = "perplexity"
data = "data/text.jsonl"

[backend]
kind = "hf"
options = {{ batch_size = 4 }}
""", encoding="utf-8")
    return path


BAD = "evaluator 'faulty' (faulty_plugin.Faulty) returned a bad result: "
FAULTS = {
    "dict-metric": BAD + "metrics[0] is a dict, not a harness.Metric",
    "text-value": BAD + "metrics[0] ('acc'): value 'high' is not a number",
    "two-primaries": BAD + "2 metrics are primary ('acc', 'loss'): mark one",
    "same-name": BAD + "2 metrics are named 'acc'",
    "nan-primary": BAD + "the primary metric 'acc' is NaN",
    "same-index": BAD + "2 samples have index 0",
    "sample-index": BAD + "samples[1]: index '1' is not an int",
    "sample-score": BAD + "samples[1]: score '0.5' is not a number or None",
    "sample-logprobs": BAD + "samples[1]: logprobs[1] 'x' is not a number",
    "sample-logprobs-number": BAD + "samples[1]: logprobs -0.5 is not a list of numbers or None",
    "sample-query": BAD + "samples[1]: query 7 is not a str or None",
    "sample-extra": BAD + "samples[1]: extra ['a'] is not a dict",
    "alert-value": BAD + "alerts[0] ('loss'): value 'big' is not a number",
    "exit": "evaluator 'faulty' (faulty_plugin.Faulty) called sys.exit(0): a plugin fails "
            "a cell by raising, not by ending the process",
}


def test_a_bad_result_fails_its_own_cell_and_the_others_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(install_plugin(tmp_path)))
    import faulty_plugin

    faults = ["dict-metric", "exit", *[f for f in FAULTS if f not in ("dict-metric", "exit")],
              "nan-other", "none"]
    path = faulty_suite(tmp_path, faults)
    host = PluginHost.load(entry_points=False, extra_plugins=[faulty_plugin])
    summary = run_suite(path, host=host, console=Console(file=open(os.devnull, "w")),
                        show_progress=False)
    assert (summary.done, summary.failed) == (3, len(FAULTS))
    store = tmp_path / "results" / "faulty.duckdb"
    _, rows = query(store, "SELECT evaluator, status, error FROM cells")
    assert {r[0]: (r[1], r[2]) for r in rows} == {
        **{fault: ("failed", error) for fault, error in FAULTS.items()},
        "nan-other": ("done", None), "none": ("done", None), "text": ("done", None)}
    # nothing of a failed cell's result is stored; the NaN of a secondary metric is
    _, rows = query(store, "SELECT c.evaluator, m.metric, isnan(m.value) FROM metrics m "
                           "JOIN cells c USING (cell_key) WHERE c.evaluator LIKE '%-%' "
                           "ORDER BY 1, 2")
    assert rows == [("nan-other", "acc", False), ("nan-other", "loss", True)]
    _, rows = query(store, "SELECT status, cells_done, cells_failed FROM runs")
    assert rows == [("done_with_failures", 3, len(FAULTS))]


def test_a_plugin_that_exits_fails_its_cell_and_harness_run_exits_1(tmp_path):
    site = install_plugin(tmp_path)
    path = faulty_suite(tmp_path, ["exit"])
    done = subprocess.run([sys.executable, "-m", "harness", "run", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, env=plugin_env(site))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "faulty: 2 cells, 0 already in the store, 1 done, 1 failed" in done.stdout
    assert FAULTS["exit"] in done.stdout
    _, rows = query(tmp_path / "results" / "faulty.duckdb",
                    "SELECT r.status, c.evaluator, c.status FROM runs r JOIN cells c "
                    "USING (run_id) ORDER BY 2")
    assert rows == [("done_with_failures", "exit", "failed"),
                    ("done_with_failures", "text", "done")]


EXITING_EXECUTOR = '''
import sys

import harness


class ExitingExecutor(harness.Executor):
    def run(self, units, work, emit):
        sys.exit(0)


@harness.hookimpl
def harness_register_executors(register):
    register("exiting", ExitingExecutor)
'''


def test_an_exit_outside_a_cell_never_ends_harness_run_with_status_0(tmp_path):
    """sys.exit(0) in an executor stops the run: exit status 1, one line, the store says
    the run failed."""
    site = install_plugin(tmp_path, "exiting_executor", EXITING_EXECUTOR)
    path = faulty_suite(tmp_path, [])
    path.write_text(path.read_text() + '\n[executor]\nkind = "exiting"\n')
    done = subprocess.run([sys.executable, "-m", "harness", "run", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, env=plugin_env(site))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "harness: error: the run stopped before it finished: SystemExit(0) raised outside "
        "a cell (a plugin must not end the process)"]
    _, rows = query(tmp_path / "results" / "faulty.duckdb", "SELECT status FROM runs")
    assert rows == [("failed",)]
