"""Re-run cost and store cost: a finished suite run again, and the time spent writing DuckDB.

    python bench/rerun_store.py [--repeats 2] [--out FILE]

The suite: SmolLM2-135M-Instruct, base and one LoRA variant (10 steps), scored on the
quickstart's `capitals` benchmark and `general-text` perplexity (4 cells). Each repeat
runs it into a fresh store (the first run: tuning, evaluation, membership scores,
paired tests, contamination checks), then again (the re-run: every cell is already
stored). Both in one fresh process, timed around `run_suite`; the store's writes are
timed by wrapping `Store._write` (open, transaction, commit, close) during the first run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from smollm2_suite import lora_tuner, suite_text  # bench/smollm2_suite.py

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, os, sys, time
from contextlib import contextmanager
os.environ["TQDM_DISABLE"] = "1"
import torch, transformers, peft, trl, lm_eval, lm_eval.evaluator  # untimed imports
from rich.console import Console
from harness.runner import run_suite
from harness.store import Store

writing = [0.0, 0]
original = Store._write

@contextmanager
def timed_write(self):
    clock = time.perf_counter()
    with original(self) as con:
        yield con
    writing[0] += time.perf_counter() - clock
    writing[1] += 1

Store._write = timed_write
quiet = Console(file=open(os.devnull, "w"))
clock = time.perf_counter()
first = run_suite(sys.argv[1], console=quiet, show_progress=False)
first_seconds = time.perf_counter() - clock
store_seconds, writes = writing
clock = time.perf_counter()
second = run_suite(sys.argv[1], console=quiet, show_progress=False)
second_seconds = time.perf_counter() - clock
assert first.failed == 0 and first.done == 4 and second.done == 0
print(json.dumps({"first_seconds": first_seconds, "rerun_seconds": second_seconds,
                  "store_write_seconds": store_seconds, "store_writes": writes}))
"""




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rerun_store.json")
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            suite = Path(tmp) / "suite.toml"
            suite.write_text(suite_text("rerun", Path(tmp) / "rerun.duckdb",
                                         lora_tuner("lora-r8", 8, 10), "reporters = []"))
            done = subprocess.run([sys.executable, "-c", WORKER, str(suite)],
                                  capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "runs": runs, "first_seconds": median("first_seconds"),
              "rerun_seconds": median("rerun_seconds"),
              "rerun_ratio": statistics.median(r["rerun_seconds"] / r["first_seconds"] for r in runs),
              "store_write_seconds": median("store_write_seconds"),
              "store_ratio": statistics.median(r["store_write_seconds"] / r["first_seconds"]
                                               for r in runs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"re-run / first run: {report['rerun_ratio']:.4f} ({report['rerun_seconds']:.2f} s / "
          f"{report['first_seconds']:.1f} s); store writes / first run: "
          f"{report['store_ratio']:.4f} ({report['store_write_seconds']:.2f} s)")


if __name__ == "__main__":
    main()
