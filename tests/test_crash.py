"""Kill a running suite with SIGKILL at several points; a re-run finishes it, recomputes no
finished cell, resumes tuning from its checkpoint, and leaves no duplicate, partial or
orphaned rows."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from harness.plugins import PluginHost
from harness.runner import run_suite
from harness.store import query

from .conftest import small_suite

# The child runs the suite and kills itself (SIGKILL: no cleanup, no finally) at one point.
CHILD = r"""
import os, signal, sys
from contextlib import contextmanager

import harness.recorder as recorder
import harness.runner as runner
import harness.store as store
import harness.worker as worker
from harness.plugins import PluginHost
from harness.events import TuningStep

suite, where = sys.argv[1], sys.argv[2]
kind, n = where.split(":")
n = int(n)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if kind == "step":          # during tuning, after optimiser step n
    record = recorder.Recorder.__call__
    def call(self, event):
        record(self, event)
        if isinstance(event, TuningStep) and event.step == n:
            die()
    recorder.Recorder.__call__ = call
elif kind == "evaluate":    # while the n-th cell is being evaluated
    evaluate, seen = worker._evaluate, [0]
    def _evaluate(cell, backend):
        seen[0] += 1
        if seen[0] == n:
            die()
        return evaluate(cell, backend)
    worker._evaluate = _evaluate
elif kind == "write":       # inside the n-th cell's store transaction, before COMMIT
    write, record_cell, state = store.Store._write, store.Store.write_cell, {"n": 0, "armed": False}
    @contextmanager
    def _write(self):
        with write(self) as con:
            yield con
            if state["armed"]:
                die()
    def _record_cell(self, *args, **kwargs):
        state["n"] += 1
        state["armed"] = state["n"] == n
        return record_cell(self, *args, **kwargs)
    store.Store._write, store.Store.write_cell = _write, _record_cell

runner.run_suite(suite, host=PluginHost.load(entry_points=False), show_progress=False)
print("finished without being killed")
"""

TUNER = """
[[tuners]]
name = "lora-a"
method = "lora"
data = "data/sft.jsonl"
options = { r = 4, alpha = 8, steps = 6, lr = 1e-2, batch_size = 4, max_length = 64, checkpoint_every = 2 }
"""


def _kill(suite, where: str) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD, str(suite), where],
                          capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr


def _done_cells(store) -> dict[str, str]:
    _, rows = query(store, "SELECT cell_key, run_id FROM cells WHERE status = 'done'")
    return dict(rows)


def _assert_whole(store, cells: int) -> None:
    """Every cell once and done; metrics and samples exactly once per cell; no orphans;
    every sample's item text stored once."""
    _, rows = query(store, "SELECT count(*), count(DISTINCT cell_key), "
                           "count(*) FILTER (WHERE status = 'done') FROM cells")
    assert rows == [(cells, cells, cells)]
    for sql in (
        "SELECT cell_key, metric FROM metrics GROUP BY ALL HAVING count(*) > 1",
        "SELECT cell_key, item_index FROM samples GROUP BY ALL HAVING count(*) > 1",
        "SELECT cell_key FROM metrics WHERE cell_key NOT IN (SELECT cell_key FROM cells)",
        "SELECT cell_key FROM samples WHERE cell_key NOT IN (SELECT cell_key FROM cells)",
        # every sample's text is stored, once
        "SELECT text_key FROM sample_rows WHERE text_key IS NOT NULL "
        "AND text_key NOT IN (SELECT text_key FROM item_texts)",
        "SELECT text_key FROM item_texts GROUP BY ALL HAVING count(*) > 1",
        "SELECT cell_key FROM cells c WHERE NOT EXISTS "
        "(SELECT 1 FROM metrics m WHERE m.cell_key = c.cell_key AND m.is_primary)",
    ):
        assert query(store, sql)[1] == [], sql


@pytest.mark.parametrize("where", ["evaluate:2", "write:3", "evaluate:4"])
def test_killed_during_evaluation_or_a_store_write(tmp_path, where):
    suite = small_suite(tmp_path, tuners=False, extra=TUNER)
    store = tmp_path / "results" / "small.duckdb"
    _kill(suite, where)
    before = _done_cells(store) if store.exists() else {}
    expected_before = {"evaluate:2": 1, "write:3": 2, "evaluate:4": 3}[where]
    assert len(before) == expected_before  # the killed cell left nothing behind

    summary = run_suite(suite, host=PluginHost.load(entry_points=False), show_progress=False)
    assert (summary.cached, summary.done, summary.failed) == (expected_before, 4 - expected_before, 0)
    _assert_whole(store, 4)
    after = _done_cells(store)
    assert {key: after[key] for key in before} == before  # finished cells were not recomputed
    _, runs = query(store, "SELECT status FROM runs ORDER BY started_at")
    assert runs == [("killed",), ("done",)]


def test_killed_while_tuning_resumes_from_the_checkpoint(tmp_path):
    suite = small_suite(tmp_path, tuners=False, extra=TUNER)
    store = tmp_path / "results" / "small.duckdb"
    _kill(suite, "step:3")  # checkpoints every 2 steps: checkpoint-2 is on disk
    partial = list((tmp_path / "results" / "small.variants").glob("*.partial"))
    assert [p.name for p in partial[0].glob("trainer/checkpoint-*")] == ["checkpoint-2"]
    assert len(_done_cells(store)) == 2  # the base's two cells were done before tuning

    run_suite(suite, host=PluginHost.load(entry_points=False), show_progress=False)
    _assert_whole(store, 4)
    _, [(steps, curve)] = query(store, "SELECT steps, loss_curve FROM variants")
    assert steps == 6
    assert len(curve) == 4  # steps 3-6 only: the run went on from checkpoint-2
    variants = tmp_path / "results" / "small.variants"
    assert not list(variants.glob("*.partial"))  # no half-written variant is left
    [adapter] = list(variants.glob("*/adapter"))
    assert not (adapter.parent / "trainer").exists()  # checkpoints are gone once it finished


PPO_TUNER = """
[[tuners]]
name = "ppo-a"
method = "ppo"
data = "data/prefs.jsonl"
options = { steps = 4, batch_size = 4, max_completion_length = 4, num_ppo_epochs = 2, lr = 1e-2, reward = "length", reward_options = { target_words = 3 }, checkpoint_every = 2 }
"""


def test_killed_ppo_resumes_from_its_own_state_to_the_same_variant(tmp_path):
    from .conftest import PREFERENCE_ROWS, write_jsonl

    runs = {}
    for name in ("clean", "killed"):
        root = tmp_path / name
        write_jsonl(root / "data" / "prefs.jsonl", PREFERENCE_ROWS)
        suite = small_suite(root, tuners=False, extra=PPO_TUNER)
        if name == "killed":
            _kill(suite, "step:3")  # the state after update 2 is on disk
            [partial] = list((root / "results" / "small.variants").glob("*.partial"))
            assert [p.name for p in (partial / "trainer").iterdir()] == ["update-2"]
        run_suite(suite, host=PluginHost.load(entry_points=False), show_progress=False)
        store = root / "results" / "small.duckdb"
        _assert_whole(store, 4)
        runs[name] = query(store, "SELECT steps, loss_curve FROM variants")[1]
        [adapter] = list((root / "results" / "small.variants").glob("*/adapter"))
        assert not (adapter.parent / "trainer").exists()
    # the resumed run kept updates 1-2 from its state and computed 3-4 as the clean run did
    [(steps, curve)] = runs["killed"]
    assert steps == 4 and len(curve) == 4
    assert runs["killed"] == runs["clean"]
