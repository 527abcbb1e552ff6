"""The `ray` executor: a small suite on a local Ray cluster stores what the local executor
stores, recorded by the driver alone."""

from __future__ import annotations

import os
import tempfile

import duckdb
import pytest

import harness

from tests.conftest import small_suite

ray = pytest.importorskip("ray")

RAY_EXECUTOR = """
[executor]
kind = "ray"
options = { num_cpus = 2 }
"""


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of this test's own: no auth, its own short temp folder (socket paths are short)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=folder, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def _metrics(store) -> dict:
    con = duckdb.connect(str(store), read_only=True)
    try:
        return {(v, e, m): value for v, e, m, value in con.execute(
            "SELECT c.variant_name, c.evaluator, m.metric, m.value FROM metrics m "
            "JOIN cells c USING (cell_key)").fetchall()}
    finally:
        con.close()


def test_ray_stores_exactly_what_the_local_executor_stores(local_ray, run_harness, tmp_path):
    local = run_harness(small_suite(tmp_path, name="local").read_text())
    on_ray = run_harness(small_suite(tmp_path, name="onray", extra=RAY_EXECUTOR).read_text())
    assert local.summary.done == on_ray.summary.done == 4 and on_ray.summary.failed == 0
    expected, got = _metrics(local.store), _metrics(on_ray.store)
    assert len(got) > 4 and got.keys() == expected.keys()
    assert got == expected  # the same numbers to the last bit


class WorkerKiller(harness.Evaluator):
    """An evaluator whose cell ends the process it runs in, as an out-of-memory kill would."""

    def evaluate(self, backend):
        os._exit(1)


class WorkerKillerPlugin:
    @harness.hookimpl
    def harness_register_evaluators(self, register):
        register("kill-worker", WorkerKiller)


KILLER = """
[[evaluators]]
name = "killer"
kind = "kill-worker"
data = "data/text.jsonl"
"""


def test_a_dead_worker_fails_only_unfinished_cells_and_a_rerun_resumes(local_ray, run_harness,
                                                                       tmp_path):
    suite = small_suite(tmp_path, name="dies", extra=RAY_EXECUTOR).read_text()
    # evaluators run in suite order per variant: mc, text, then the killer
    crashed = run_harness(suite + KILLER, plugins=[WorkerKillerPlugin()])
    assert (crashed.summary.done, crashed.summary.failed) == (2, 4)
    con = duckdb.connect(str(crashed.store), read_only=True)
    rows = con.execute("SELECT variant_name, evaluator, status, error FROM cells "
                       "ORDER BY variant_name, evaluator").fetchall()
    con.close()
    assert [r[:3] for r in rows if r[2] == "done"] == [("base", "mc", "done"),
                                                       ("base", "text", "done")]
    assert all("ray worker for 'tiny' failed" in r[3] for r in rows if r[2] == "failed")
    resumed = run_harness(suite)  # the same suite without the killer
    assert (resumed.summary.cached, resumed.summary.done, resumed.summary.failed) == (2, 2, 0)
