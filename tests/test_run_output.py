"""What ``harness run`` prints without a terminal, how it ends on Ctrl-C, and what a
benchmark cell runs besides the model (no subprocesses)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from harness import EvaluatorSpec
from harness.store import query
from harness_plugins.evaluators.benchmark import BenchmarkEvaluator, BenchmarkOptions

from .conftest import MC_ROWS, write_jsonl
from .test_plugin_results import FAULTS, faulty_suite, install_plugin, plugin_env

pytestmark = pytest.mark.slow

LORA = """
[[tuners]]
name = "lora-a"
method = "lora"
data = "data/sft.jsonl"
options = { r = 4, alpha = 8, steps = 2, lr = 1e-2, batch_size = 4, max_length = 64 }
"""
SECONDS = r"\(\d+\.\d s\)"


def test_without_a_terminal_each_finished_variant_and_cell_is_one_line(tmp_path):
    from .conftest import SFT_ROWS

    site = install_plugin(tmp_path)
    write_jsonl(tmp_path / "data" / "sft.jsonl", SFT_ROWS)
    path = faulty_suite(tmp_path, ["same-name", "long-notes"], tuner=LORA)
    out = tmp_path / "out.log"
    with out.open("w") as handle:  # a file, as a CI log is: no terminal
        done = subprocess.run([sys.executable, "-m", "harness", "run", str(path)],
                              cwd=tmp_path, stdout=handle, stderr=subprocess.PIPE, text=True,
                              env=plugin_env(site))
    text = out.read_text()
    assert done.returncode == 1, text + done.stderr
    progress = [line for line in text.splitlines() if line.startswith("[")]
    expected = [
        rf"\[1/6\] failed  tiny base same-name  {SECONDS}",
        rf"\[2/6\] done  tiny base long-notes  {SECONDS}",
        rf"\[3/6\] done  tiny base text  {SECONDS}",
        rf"\[variant 1/1\] tuned  tiny lora-a  {SECONDS}",
        rf"\[4/6\] failed  tiny lora-a same-name  {SECONDS}",
        rf"\[5/6\] done  tiny lora-a long-notes  {SECONDS}",
        rf"\[6/6\] done  tiny lora-a text  {SECONDS}",
    ]
    assert len(progress) == len(expected), text
    for line, pattern in zip(progress, expected):
        assert re.fullmatch(pattern, line), (line, pattern)
    assert f"cell tiny/base/same-name failed: {FAULTS['same-name']}" in text
    assert "\x1b[" not in text  # no terminal codes in a log
    # a plugin's warning and alert lines whole, however long, their brackets as written
    lines = text.splitlines()
    assert "warning long-notes: [red]" + "w" * 300 in lines
    assert "alert tiny/base/long-notes: [b]" + "a" * 300 in lines


def test_ctrl_c_exits_130_with_one_line_and_the_run_marked_interrupted(tmp_path):
    site = install_plugin(tmp_path)
    path = faulty_suite(tmp_path, ["none", "slow"])
    started, out = tmp_path / "slow-started", tmp_path / "out.log"
    with out.open("w") as handle:
        child = subprocess.Popen([sys.executable, "-m", "harness", "run", str(path)],
                                 cwd=tmp_path, stdout=handle, stderr=subprocess.PIPE, text=True,
                                 env=plugin_env(site, FAULTY_STARTED=str(started)))
        try:
            deadline = time.monotonic() + 300
            while not started.exists():
                assert child.poll() is None and time.monotonic() < deadline, out.read_text()
                time.sleep(0.2)
            # the first cell's line is in the log already, not held in a buffer
            assert re.search(rf"^\[1/3\] done  tiny base none  {SECONDS}$", out.read_text(),
                             re.MULTILINE), out.read_text()
            child.send_signal(signal.SIGINT)
            _, stderr = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == 130, out.read_text() + stderr
    assert stderr.strip().splitlines() == [
        "harness: interrupted: the cells finished so far are stored; run the suite again "
        "to finish it"]
    store = tmp_path / "results" / "faulty.duckdb"
    assert query(store, "SELECT status, cells_done, cells_failed FROM runs")[1] == [
        ("interrupted", 1, 0)]
    assert query(store, "SELECT evaluator, status FROM cells")[1] == [("none", "done")]


def test_a_benchmark_cell_starts_no_subprocess(tmp_path, backend, monkeypatch, capfd):
    """lm-eval's git hash and torch's environment report (git, pip, nvidia-smi, ...), none
    of which the store keeps, are not collected."""
    spawned = []

    class Recording(subprocess.Popen):
        def __init__(self, args, *rest, **options):
            spawned.append(args)
            super().__init__(args, *rest, **options)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    data = write_jsonl(tmp_path / "mc.jsonl", MC_ROWS[:3])
    evaluator = BenchmarkEvaluator(EvaluatorSpec("mc", "benchmark", "general", str(data), 0),
                                   BenchmarkOptions())
    result = evaluator.evaluate(backend)
    assert [m.name for m in result.metrics if m.primary] == ["acc"]
    assert spawned == []
    assert "fatal:" not in capfd.readouterr().err
